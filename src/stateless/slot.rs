//! One cache slot: a channel's stateless token, the single flight that
//! issues it, the failure hold and the local guard.
//!
//! Two locks, each for one job:
//!
//! - `state` (a std `Mutex`, never held across an `.await`): the cached
//!   token, the hold, the backoff, the guard's window. Every request takes
//!   it briefly to apply [`rules::decide`].
//! - `flight` (a tokio `Mutex`, held across the call to LINE): whoever
//!   issues holds it. A request that finds the cache cold takes it, and
//!   **re-checks the cache after locking**: if a flight finished while it
//!   waited, it takes that flight's token (`coalesced`) or that flight's
//!   failure, and never calls LINE itself. So however many requests arrive
//!   on a cold cache, one call reaches LINE. The background refresh takes
//!   the same lock, so a refresh and a miss never issue twice.
//!
//! A failed flight sets a hold (2 s doubling to 30 s, [`rules::Backoff`]):
//! its waiters and every request until the hold ends get the failure at
//! once. A success clears the hold and resets the doubling.
//!
//! Depends on `line` (the client), `delivery::sink` (optional sinks),
//! `clock` and `metrics`.

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Duration, Utc};

use super::rules::{self, Backoff, Decision, IssueWindow};
use super::{
    Cached, RequestResult, Served, StatelessAuth, StatelessError, StatelessRules, StatelessSetup,
    sinks,
};
use crate::clock::SharedClock;
use crate::delivery::sink::{self, SinkSpec};
use crate::domain::ChannelId;
use crate::line::{LineClient, LineError};
use crate::metrics::Metrics;
use crate::store::{Store, stateless_note_key};

/// The longest lifetime believed from LINE's `expires_in`. LINE documents
/// 15 minutes for a stateless token; a larger figure is not trusted (a
/// cache that believed "30 days" would serve a dead token), a smaller one
/// is taken as it is.
pub const MAX_LIFETIME: Duration = Duration::minutes(15);

/// What the cache holds about a channel between requests.
#[derive(Default)]
struct State {
    token: Option<Cached>,
    /// Issuing is held back until then, and requests that find no servable
    /// token get this failure.
    held: Option<(DateTime<Utc>, StatelessError)>,
    backoff: Backoff,
    window: IssueWindow,
    /// A background refresh is running.
    refreshing: bool,
    /// When the current run of failed calls began (`None` after a
    /// success): `status` shows "failing since".
    failing_since: Option<DateTime<Utc>>,
    /// Calls to LINE so far, numbering the notes so an older one never
    /// overwrites a newer.
    calls: u64,
}

/// What the slot needs to reach LINE and report.
#[derive(Clone)]
pub(super) struct Context {
    pub(super) line: LineClient,
    pub(super) clock: SharedClock,
    pub(super) metrics: Arc<Metrics>,
    /// Told after every flight (success or failure).
    pub(super) flights: Arc<tokio::sync::watch::Sender<u64>>,
    /// Where each channel's issuing state is noted for `linetokd status`
    /// (never a token); none in tests that need no status.
    pub(super) store: Option<Store>,
}

/// One channel's slot (see the module docs).
pub(super) struct Slot {
    channel: ChannelId,
    /// The credentials' identity: a reload that changes it replaces the
    /// slot, dropping its token.
    identity: String,
    auth: StatelessAuth,
    /// Margins, guard, sinks: a reload replaces them in place.
    settings: RwLock<(StatelessRules, Vec<SinkSpec>)>,
    state: Mutex<State>,
    /// Held by whoever calls LINE; shared so a flight's task can own its
    /// guard (see [`Slot::flight`]).
    flight: Arc<tokio::sync::Mutex<()>>,
    /// Held while the sinks are written, with the expiry of the token they
    /// hold: writes run after the flight released its waiters, one at a
    /// time, and never put an older token over a newer one.
    sink_writes: Arc<tokio::sync::Mutex<Option<DateTime<Utc>>>>,
    /// Held while the status note is written, with the number of the call
    /// it describes: notes are written off the flight, one at a time,
    /// never an older over a newer.
    note_writes: Arc<tokio::sync::Mutex<u64>>,
}

impl Slot {
    pub(super) fn new(setup: StatelessSetup) -> Self {
        Self {
            channel: setup.channel,
            identity: setup.identity,
            auth: setup.auth,
            settings: RwLock::new((setup.rules, setup.sinks)),
            state: Mutex::new(State::default()),
            flight: Arc::new(tokio::sync::Mutex::new(())),
            sink_writes: Arc::new(tokio::sync::Mutex::new(None)),
            note_writes: Arc::new(tokio::sync::Mutex::new(0)),
        }
    }

    /// True when the slot writes sinks.
    pub(super) fn has_sinks(&self) -> bool {
        !self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .is_empty()
    }

    /// When the sink keeper should next look (see [`super::keep_sinks`]):
    /// when the cached token enters `refresh_ahead`, at once when nothing is
    /// cached, and never before a failure's hold ends.
    pub(super) fn keep_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let rules = self.rules();
        let st = self.state();
        let due = st
            .token
            .as_ref()
            .map_or(now, |t| t.expires_at - rules.margins.refresh_ahead);
        st.held.as_ref().map_or(due, |(until, _)| due.max(*until))
    }

    /// True when `setup` speaks with the same credentials: the slot (and
    /// its token) may be kept.
    pub(super) fn same_identity(&self, setup: &StatelessSetup) -> bool {
        self.identity == setup.identity
    }

    /// Takes a reload's margins, guard and sinks.
    pub(super) fn update(&self, setup: StatelessSetup) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (setup.rules, setup.sinks);
    }

    fn rules(&self) -> StatelessRules {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A token for one request (see the module docs), counted in
    /// `linetokd_stateless_requests_total`.
    pub(super) async fn get(self: &Arc<Self>, cx: &Context) -> Result<Served, StatelessError> {
        let outcome = self.answer(cx).await;
        let result = match &outcome {
            Ok(served) => served.result,
            Err(_) => RequestResult::Error,
        };
        cx.metrics.stateless_request(&self.channel, result.as_str());
        outcome
    }

    async fn answer(self: &Arc<Self>, cx: &Context) -> Result<Served, StatelessError> {
        match self.look(cx.clock.now(), true) {
            Look::Token(token, ahead, start_refresh) => {
                if start_refresh {
                    let (slot, cx) = (Arc::clone(self), cx.clone());
                    tokio::spawn(async move { slot.refresh(&cx).await });
                }
                let result = if ahead {
                    RequestResult::RefreshAhead
                } else {
                    RequestResult::Hit
                };
                Ok(Served { token, result })
            }
            Look::Failure(e) => Err(e),
            Look::Issue => self.flight(cx).await,
        }
    }

    /// Applies the rules at `now`; when `may_refresh` and a refresh is due,
    /// marks it started (the caller starts it).
    fn look(&self, now: DateTime<Utc>, may_refresh: bool) -> Look {
        let rules = self.rules();
        let mut st = self.state();
        let decision = rules::decide(
            now,
            st.token.as_ref().map(|t| t.expires_at),
            rules.margins,
            st.held.as_ref().map(|(until, _)| *until),
            st.refreshing || !may_refresh,
        );
        match decision {
            Decision::Serve {
                ahead,
                start_refresh,
            } => {
                if start_refresh {
                    st.refreshing = true;
                }
                match &st.token {
                    Some(token) => Look::Token(token.clone(), ahead, start_refresh),
                    // `decide` serves only a cached token.
                    None => Look::Issue,
                }
            }
            Decision::HeldBack { .. } => match &st.held {
                Some((_, failure)) => Look::Failure(failure.clone()),
                None => Look::Issue,
            },
            Decision::Issue => Look::Issue,
        }
    }

    /// The single flight: the first request issues, the others wait for
    /// it and take its outcome. The call runs in its own task, which owns
    /// the flight's guard: a client that hangs up does not cancel the call
    /// its waiters are waiting for (they would each start another).
    async fn flight(self: &Arc<Self>, cx: &Context) -> Result<Served, StatelessError> {
        let (guard, waited) = match Arc::clone(&self.flight).try_lock_owned() {
            Ok(guard) => (guard, false),
            Err(_) => (Arc::clone(&self.flight).lock_owned().await, true),
        };
        // Re-check: a flight may have finished while this request waited
        // (or between its first look and the lock).
        match self.look(cx.clock.now(), false) {
            Look::Token(token, ..) => {
                let result = if waited {
                    RequestResult::Coalesced
                } else {
                    RequestResult::Hit
                };
                return Ok(Served { token, result });
            }
            Look::Failure(e) => return Err(e),
            Look::Issue => {}
        }
        let (slot, task_cx) = (Arc::clone(self), cx.clone());
        let call = tokio::spawn(async move {
            let _guard = guard;
            slot.issue(&task_cx).await
        });
        let token = match call.await {
            Ok(outcome) => outcome?,
            // Only a panic ends the task early; its waiters re-check.
            Err(e) => {
                return Err(StatelessError::Unavailable {
                    channel: self.channel.clone(),
                    cause: format!("the issuing task ended: {e}"),
                    retry_at: cx.clock.now(),
                });
            }
        };
        Ok(Served {
            token,
            result: RequestResult::Miss,
        })
    }

    /// The background refresh started inside `refresh_ahead` (by a request,
    /// or by the sink keeper): takes the flight lock, and issues unless a
    /// flight already replaced the token.
    pub(super) async fn refresh(self: &Arc<Self>, cx: &Context) {
        {
            let _flight = self.flight.lock().await;
            let now = cx.clock.now();
            let rules = self.rules();
            let due = self
                .state()
                .token
                .as_ref()
                .is_none_or(|t| now >= t.expires_at - rules.margins.refresh_ahead);
            if due {
                // A failure is recorded as the hold; the old token is
                // served on until the margin.
                let _ = self.issue(cx).await;
            }
        }
        self.state().refreshing = false;
    }

    /// One call to LINE, under the flight lock: the local guard, the call
    /// bounded by the load timeout, then the cache, the hold and the sinks.
    async fn issue(self: &Arc<Self>, cx: &Context) -> Result<Cached, StatelessError> {
        let rules = self.rules();
        let now = cx.clock.now();
        // Bound first: the guard must be dropped before the lock is taken
        // again below.
        let taken = self.state().window.take(now, rules.max_issues_per_minute);
        if let Err(free_at) = taken {
            let failure = StatelessError::LocalLimit {
                channel: self.channel.clone(),
                max: rules.max_issues_per_minute,
                retry_at: free_at,
            };
            tracing::warn!(channel = %self.channel, max_issues_per_minute = rules.max_issues_per_minute, "stateless token not issued: the local max_issues_per_minute guard is reached");
            self.state().held = Some((free_at, failure.clone()));
            return Err(failure);
        }
        let sent_at = now;
        let call = async {
            match &self.auth {
                StatelessAuth::Assertion(signer) => {
                    cx.line.issue_stateless_with_assertion(signer).await
                }
                StatelessAuth::Secret(secret) => {
                    cx.line
                        .issue_stateless_with_secret(&self.channel, secret)
                        .await
                }
            }
        };
        let answered = tokio::time::timeout(rules.load_timeout, call).await;
        let outcome = match answered {
            Ok(Ok(issued)) => {
                // Conservative: LINE counts from when it received the
                // request, which is after we sent it.
                let lifetime = Duration::seconds(issued.expires_in).min(MAX_LIFETIME);
                Ok(Cached {
                    token: issued.access_token,
                    token_type: issued.token_type,
                    expires_at: sent_at + lifetime,
                })
            }
            Ok(Err(e)) => Err((self.failure(&e, now), e.retry_after())),
            Err(_) => Err((
                StatelessError::Unavailable {
                    channel: self.channel.clone(),
                    cause: format!(
                        "no answer from LINE within the load timeout ({} s)",
                        rules.load_timeout.as_secs()
                    ),
                    retry_at: now,
                },
                None,
            )),
        };
        let outcome = match outcome {
            Ok(cached) => {
                let call = {
                    let mut st = self.state();
                    st.token = Some(cached.clone());
                    st.held = None;
                    st.backoff.succeeded();
                    st.failing_since = None;
                    st.calls += 1;
                    st.calls
                };
                self.note(
                    cx,
                    call,
                    format!(
                        "ok: issued at {}, expires at {}",
                        sink::timestamp(sent_at),
                        sink::timestamp(cached.expires_at)
                    ),
                );
                cx.metrics.stateless_issue(&self.channel, "success");
                tracing::info!(channel = %self.channel, expires_at = %cached.expires_at, "stateless token issued");
                self.write_sinks(&cached);
                Ok(cached)
            }
            Err((failure, hint)) => {
                let done = cx.clock.now();
                let (failure, since, call) = {
                    let mut st = self.state();
                    let hint = hint.and_then(|h| Duration::from_std(h).ok());
                    let until = done + st.backoff.failed(hint);
                    let failure = failure.with_retry_at(until);
                    st.held = Some((until, failure.clone()));
                    let since = *st.failing_since.get_or_insert(sent_at);
                    st.calls += 1;
                    (failure, since, st.calls)
                };
                self.note(
                    cx,
                    call,
                    format!(
                        "failing since {}: {failure}; no call to LINE before {}",
                        sink::timestamp(since),
                        sink::timestamp(failure.retry_at())
                    ),
                );
                cx.metrics
                    .stateless_issue(&self.channel, failure.issue_result());
                tracing::warn!(channel = %self.channel, error = %failure, "stateless token not issued; requests get this failure until the retry time");
                Err(failure)
            }
        };
        cx.flights.send_modify(|n| *n += 1);
        outcome
    }

    /// Writes `token` to the sinks in a task of its own, so a slow disk
    /// never holds up the requests waiting for this flight.
    fn write_sinks(&self, token: &Cached) {
        let specs = self
            .settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone();
        if specs.is_empty() {
            return;
        }
        let (lock, channel, token) = (
            Arc::clone(&self.sink_writes),
            self.channel.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            let mut written = lock.lock().await;
            if written.is_some_and(|at| at >= token.expires_at) {
                return;
            }
            sinks::write_all(&channel, &specs, &token).await;
            *written = Some(token.expires_at);
        });
    }

    /// Writes the channel's status note for call number `call`, in a task
    /// of its own (a slow disk never holds up the flight's waiters).
    fn note(&self, cx: &Context, call: u64, text: String) {
        let Some(store) = cx.store.clone() else {
            return;
        };
        let (lock, key, at) = (
            Arc::clone(&self.note_writes),
            stateless_note_key(&self.channel),
            cx.clock.now(),
        );
        tokio::spawn(async move {
            let mut written = lock.lock().await;
            if *written >= call {
                return;
            }
            match store.blocking(move |s| s.set_note(at, &key, &text)).await {
                Ok(()) => *written = call,
                Err(e) => {
                    tracing::debug!(error = %crate::logging::error_chain(&e), "cannot note the stateless state for status");
                }
            }
        });
    }

    /// LINE's failure as clients see it: transient ones (network, 5xx,
    /// 429, an unusable success) answer 503, permanent ones 502. The retry
    /// time is set by the caller, from the backoff.
    fn failure(&self, e: &LineError, now: DateTime<Utc>) -> StatelessError {
        let permanent = matches!(e, LineError::Permanent { .. } | LineError::Assertion { .. });
        if permanent {
            StatelessError::Refused {
                channel: self.channel.clone(),
                status: e.status().map(|s| s.as_u16()),
                code: e.code().map(safe_code),
                cause: e.to_string(),
                retry_at: now,
            }
        } else {
            StatelessError::Unavailable {
                channel: self.channel.clone(),
                cause: e.to_string(),
                retry_at: now,
            }
        }
    }
}

/// LINE's error code as it may be shown to a client: short, visible
/// ASCII only (LINE's codes are words like `invalid_client`).
fn safe_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect()
}

/// What a look at the cache found.
enum Look {
    /// A servable token; inside `refresh_ahead`; this request starts the
    /// refresh.
    Token(Cached, bool, bool),
    /// Issuing is held back: this failure.
    Failure(StatelessError),
    /// Nothing servable: issue.
    Issue,
}
