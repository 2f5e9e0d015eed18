//! Stateless channel access tokens on demand (docs/design.md §6, "Stateless tokens"), behind
//! `GET /v1/channels/{channel}/stateless-token`.
//!
//! LINE's stateless tokens live 15 minutes, cannot be revoked and are
//! "designed to be issued each time a channel is used". linetokd keeps one
//! per configured channel **in memory only** (never in the database; in
//! files only when the channel's `sinks` ask for it) and hands it out:
//!
//! - served while more than `refresh_margin` is left;
//! - inside `refresh_ahead`, still served while one background refresh
//!   runs; the old token is served until the new one lands;
//! - on a miss, a **single flight**: the first request issues, every
//!   concurrent request waits for that flight and takes its outcome
//!   (1,000 requests on a cold cache make one call to LINE);
//! - a failed flight holds issuing back 2 s, doubling to 30 s, reset by a
//!   success: until then requests get the failure at once and LINE is not
//!   called, so an outage is not hammered;
//! - at most `max_issues_per_minute` calls per channel (a local guard;
//!   past it requests get a 503 with `Retry-After`).
//!
//! The parts: [`rules`] (pure: serve, refresh ahead, miss, backoff, the
//! guard), `slot` (one channel's cache and its flight), `sinks` (the
//! optional files). [`Stateless`] holds every enabled channel's slot; a
//! reload keeps a slot whose credentials are unchanged and drops one whose
//! auth or key changed (its token was issued with the old credentials).
//!
//! Invariant: no token value reaches a log line, a metric, an error or
//! `Debug` output ([`Cached`] prints its expiry only; [`StatelessError`]
//! carries LINE's scrubbed error text and code, never a token).
//!
//! Depends on `line` (the client and its signer), `delivery::sink` (the
//! atomic file writer), `domain`, `clock` and `metrics`. Reads no config:
//! `app` builds a [`StatelessSetup`] per enabled channel.

pub mod rules;
mod sinks;
mod slot;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::delivery::sink::SinkSpec;
use crate::domain::{AccessToken, ChannelId, ChannelSecret};
use crate::line::LineClient;
use crate::line::jwt::AssertionSigner;
use crate::metrics::Metrics;

pub use rules::Margins;
use slot::{Context, Slot};

/// How a channel authenticates its stateless issues.
pub enum StatelessAuth {
    /// A client assertion signed with the channel's key (`auth =
    /// "assertion"`).
    Assertion(Arc<AssertionSigner>),
    /// The channel secret (`auth = "secret"`): the form with exactly
    /// `grant_type`, `client_id` and `client_secret`.
    Secret(ChannelSecret),
}

impl StatelessAuth {
    /// `assertion` or `secret`, as the config spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Assertion(_) => "assertion",
            Self::Secret(_) => "secret",
        }
    }
}

/// A channel's cache rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatelessRules {
    /// When a token is served and when it is refreshed.
    pub margins: Margins,
    /// The local guard: calls to LINE per rolling minute.
    pub max_issues_per_minute: u32,
    /// How long one call to LINE may take (`request_timeout`).
    pub load_timeout: std::time::Duration,
}

/// One enabled channel, as `app` builds it from the config.
pub struct StatelessSetup {
    /// The channel.
    pub channel: ChannelId,
    /// How it authenticates.
    pub auth: StatelessAuth,
    /// A digest of the credentials `auth` uses (never the credentials
    /// themselves): a reload that changes it drops the cached token.
    pub identity: String,
    /// Margins, guard and load timeout.
    pub rules: StatelessRules,
    /// Files rewritten with every new token; usually none.
    pub sinks: Vec<SinkSpec>,
}

/// A cached stateless token. `Debug` shows its expiry, never its value.
#[derive(Clone)]
pub struct Cached {
    /// The token.
    pub token: AccessToken,
    /// LINE's `token_type` (`Bearer`).
    pub token_type: String,
    /// When the request that issued it was sent, plus LINE's `expires_in`
    /// (at most 15 minutes): never later than LINE's own expiry.
    pub expires_at: DateTime<Utc>,
}

impl fmt::Debug for Cached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// How a request was answered: the `result` label of
/// `linetokd_stateless_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestResult {
    /// The cached token, with more than `refresh_ahead` left.
    Hit,
    /// The cached token, inside `refresh_ahead` (a refresh runs or is
    /// held back).
    RefreshAhead,
    /// Nothing servable was cached: this request issued (the flight's
    /// leader).
    Miss,
    /// This request waited for another request's flight and got its token.
    Coalesced,
    /// The request got a failure (LINE's, the hold after it, or the local
    /// guard).
    Error,
}

impl RequestResult {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::RefreshAhead => "refresh_ahead",
            Self::Miss => "miss",
            Self::Coalesced => "coalesced",
            Self::Error => "error",
        }
    }
}

/// A token handed out, and how.
#[derive(Debug, Clone)]
pub struct Served {
    /// The token.
    pub token: Cached,
    /// How the request was answered.
    pub result: RequestResult,
}

/// Why no token was handed out. Never holds a token: LINE's answer is
/// kept as the client's scrubbed error text and LINE's error code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StatelessError {
    /// LINE could not be reached or answered with a transient failure
    /// (5xx, 429, a timeout, an unusable success): HTTP 503 with
    /// `Retry-After`.
    #[error(
        "channel {channel}: LINE did not issue a stateless token ({cause}); next attempt at {retry_at}"
    )]
    Unavailable {
        /// The channel.
        channel: ChannelId,
        /// What went wrong, as the LINE client words it.
        cause: String,
        /// No call to LINE before then.
        retry_at: DateTime<Utc>,
    },
    /// LINE refused (400, 404: wrong credentials, unknown key): HTTP 502
    /// naming LINE's error code.
    #[error(
        "channel {channel}: LINE refused to issue a stateless token ({cause}); next attempt at {retry_at}"
    )]
    Refused {
        /// The channel.
        channel: ChannelId,
        /// LINE's HTTP status, when it answered.
        status: Option<u16>,
        /// LINE's `error` code (`invalid_client`, `invalid_request`), when
        /// the body had one.
        code: Option<String>,
        /// What went wrong, as the LINE client words it.
        cause: String,
        /// No call to LINE before then.
        retry_at: DateTime<Utc>,
    },
    /// The local guard: `max_issues_per_minute` calls were made in the
    /// last minute. HTTP 503 with `Retry-After`; LINE is not called.
    #[error(
        "channel {channel}: {max} stateless tokens were issued in the last minute (max_issues_per_minute); next attempt at {retry_at}"
    )]
    LocalLimit {
        /// The channel.
        channel: ChannelId,
        /// The configured limit.
        max: u32,
        /// When the window has room again.
        retry_at: DateTime<Utc>,
    },
}

impl StatelessError {
    /// When issuing may be tried again.
    pub fn retry_at(&self) -> DateTime<Utc> {
        match self {
            Self::Unavailable { retry_at, .. }
            | Self::Refused { retry_at, .. }
            | Self::LocalLimit { retry_at, .. } => *retry_at,
        }
    }

    /// True for LINE's permanent refusals (HTTP 502).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Refused { .. })
    }

    /// The same failure with another retry time.
    fn with_retry_at(mut self, at: DateTime<Utc>) -> Self {
        match &mut self {
            Self::Unavailable { retry_at, .. }
            | Self::Refused { retry_at, .. }
            | Self::LocalLimit { retry_at, .. } => *retry_at = at,
        }
        self
    }

    /// The `result` label of `linetokd_stateless_issues_total` for a
    /// failed call.
    fn issue_result(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "permanent",
            Self::Unavailable { .. } | Self::LocalLimit { .. } => "transient",
        }
    }
}

/// Every enabled channel's stateless cache. Cheap to share (`Arc`); the
/// HTTP handler asks it, `app` replaces its channels on reload.
pub struct Stateless {
    slots: RwLock<HashMap<ChannelId, Arc<Slot>>>,
    cx: Context,
    flights: watch::Receiver<u64>,
    /// Stops the sink keepers of the channels as they stand; replaced by
    /// every [`Stateless::set_channels`], cancelled when the cache is
    /// dropped.
    keepers: std::sync::Mutex<CancellationToken>,
}

impl Drop for Stateless {
    fn drop(&mut self) {
        self.keepers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }
}

impl fmt::Debug for Stateless {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stateless")
            .field("channels", &self.read().len())
            .finish_non_exhaustive()
    }
}

impl Stateless {
    /// An empty cache issuing through `line`, reading "now" from `clock`,
    /// counting in `metrics`.
    pub fn new(line: LineClient, clock: SharedClock, metrics: Arc<Metrics>) -> Self {
        let (tx, flights) = watch::channel(0);
        Self {
            slots: RwLock::new(HashMap::new()),
            cx: Context {
                line,
                clock,
                metrics,
                flights: Arc::new(tx),
                store: None,
            },
            flights,
            keepers: std::sync::Mutex::new(CancellationToken::new()),
        }
    }

    /// Notes each channel's issuing state (last issue and expiry, or
    /// "failing since") in `store` for `linetokd status`; never a token.
    #[must_use]
    pub fn with_store(mut self, store: crate::store::Store) -> Self {
        self.cx.store = Some(store);
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<ChannelId, Arc<Slot>>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `setups` the enabled channels: a channel whose credentials
    /// are unchanged keeps its slot (and token) with the new rules and
    /// sinks; a new channel, or one whose auth or key changed, starts cold;
    /// a channel not listed is dropped with its token.
    pub fn set_channels(&self, setups: Vec<StatelessSetup>) {
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(setups.len());
        for setup in setups {
            let channel = setup.channel.clone();
            let slot = match slots.remove(&channel) {
                Some(slot) if slot.same_identity(&setup) => {
                    slot.update(setup);
                    slot
                }
                Some(_) => {
                    tracing::info!(channel = %channel, "stateless credentials changed: the cached token is dropped");
                    Arc::new(Slot::new(setup))
                }
                None => Arc::new(Slot::new(setup)),
            };
            next.insert(channel, slot);
        }
        // A file consumer reads no API: a channel with sinks keeps its token
        // fresh by itself, one keeper per such channel.
        let stop = CancellationToken::new();
        for slot in next.values().filter(|s| s.has_sinks()) {
            tokio::spawn(keep_sinks(Arc::clone(slot), self.cx.clone(), stop.clone()));
        }
        let old = std::mem::replace(
            &mut *self.keepers.lock().unwrap_or_else(PoisonError::into_inner),
            stop,
        );
        old.cancel();
        *slots = next;
    }

    /// True when `channel` serves stateless tokens.
    pub fn serves(&self, channel: &ChannelId) -> bool {
        self.read().contains_key(channel)
    }

    /// A token for `channel`, or `None` when it serves no stateless
    /// tokens.
    ///
    /// # Errors
    /// [`StatelessError`] when LINE did not issue (or issuing is held back
    /// after a failure, or the local guard is reached).
    pub async fn token(&self, channel: &ChannelId) -> Option<Result<Served, StatelessError>> {
        let slot = self.read().get(channel).cloned()?;
        Some(slot.get(&self.cx).await)
    }

    /// Counts finished calls to LINE (successes and failures), so a caller
    /// can wait for a background refresh without sleeping.
    pub fn flights(&self) -> watch::Receiver<u64> {
        self.flights.clone()
    }
}

/// Keeps a channel's sinks holding a live token without any request: the
/// token is refreshed as it enters `refresh_ahead` (one issue about every
/// `15m - refresh_ahead`), and after a failure at the end of its hold (the
/// same 2 s doubling to 30 s backoff requests see). It shares the slot's
/// flight lock, so it never issues beside a request's flight.
async fn keep_sinks(slot: Arc<Slot>, cx: Context, stop: CancellationToken) {
    loop {
        let at = slot.keep_at(cx.clock.now());
        tokio::select! {
            () = stop.cancelled() => return,
            () = cx.clock.sleep_until(at) => {}
        }
        if stop.is_cancelled() {
            return;
        }
        slot.refresh(&cx).await;
    }
}
