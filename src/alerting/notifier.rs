//! The notifier: the daemon's task that sends what [`super::route`] finds
//! due, and records every step in the store before it is forgotten.
//!
//! One step ([`Notifier::step`]) reads the alerts and the per-receiver
//! state, routes, and for each due notification: records it (its id
//! first, so a crash mid-send retries with the same id), builds what each
//! alert says from screened texts, renders the requests, refuses to send a
//! body that still holds a stored token value, sends, and records the
//! outcome (delivered, retry at, or given up). It repeats until nothing is
//! due, and returns when something next will be. [`Notifier::run`] sleeps
//! on the clock until then, or until the store says alerts changed
//! ([`Store::subscribe_alerts`]) or a reload brings new receivers: no
//! polling.
//!
//! Depends on `store`, `clock`, `metrics`, `channel_index` and its
//! siblings; `app` builds its [`NotifierSettings`] from the config.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::{DateTime, Duration, Utc};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::render::{Context, Told};
use super::route::{self, Due, ReceiverRoute, RouteSettings};
use super::send::{self, Outcome, Receiver, ReceiverKind};
use crate::channel_index::ChannelIndex;
use crate::clock::SharedClock;
use crate::domain::{AccessToken, ChannelId, GroupName};
use crate::metrics::Metrics;
use crate::store::{AlertLabel, AlertRecord, AlertScope, AlertSpec, Store, StoreError};

/// Resolved alerts are read back this far: beyond the 24 h after which any
/// notification is given up, with room for a daemon that was down a while.
const LOOKBACK: Duration = Duration::hours(48);
/// Slack's limit: one message a second per webhook URL.
const SLACK_SPACING: Duration = Duration::seconds(1);
/// How long to wait after the store failed before trying again.
const STORE_RETRY: Duration = Duration::seconds(30);
/// At most so many rounds of route-and-send in one step; more means
/// something keeps falling due at once, and the next step carries on.
const MAX_ROUNDS: usize = 64;
/// The shortest real time between two steps woken by alert changes.
const CHANGE_GAP: std::time::Duration = std::time::Duration::from_secs(1);
/// How often old notification state is pruned.
const PRUNE_EVERY: Duration = Duration::hours(1);

/// What the notifier is told by the config; replaced on reload.
#[derive(Debug, Clone)]
pub struct NotifierSettings {
    /// Group wait and repeat intervals.
    pub route: RouteSettings,
    /// `[alerts] external_url`.
    pub external_url: Option<String>,
    /// The receivers, in config order.
    pub receivers: Vec<Receiver>,
    /// Channel names, for the `channel_name` label.
    pub channel_names: ChannelIndex,
    /// Where a `line` receiver gets the current token of its group.
    pub tokens: TokenSource,
}

/// Where the current token of a group comes from, for `line` receivers:
/// the daemon's token book (what the token API serves).
#[derive(Clone)]
pub struct TokenSource(Arc<CurrentToken>);

/// A function from a group to its current token.
type CurrentToken = dyn Fn(&ChannelId, &GroupName) -> Option<AccessToken> + Send + Sync;

impl TokenSource {
    /// A source answering with `f`.
    pub fn new(
        f: impl Fn(&ChannelId, &GroupName) -> Option<AccessToken> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }

    /// A source that has no token (for setups without `line` receivers).
    pub fn none() -> Self {
        Self::new(|_, _| None)
    }

    /// The group's current token, if it has one.
    pub fn current(&self, channel: &ChannelId, group: &GroupName) -> Option<AccessToken> {
        (self.0)(channel, group)
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSource")
    }
}

/// The notifier task's state.
pub struct Notifier {
    store: Store,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    client: reqwest::Client,
    settings: RwLock<Arc<NotifierSettings>>,
    /// Woken by [`Notifier::set_settings`].
    reloaded: Notify,
    /// Per Slack URL, the earliest time of its next message.
    spacing: Mutex<HashMap<String, DateTime<Utc>>>,
    last_prune: Mutex<Option<DateTime<Utc>>>,
    /// Under `[ha]`: whether this instance holds the daemon-wide duties
    /// (one instance notifies, not every one), and how often to look
    /// again, since other instances' alert changes wake no one here.
    duty: Mutex<Option<(Duty, chrono::Duration)>>,
}

/// Whether this instance should send notifications now ([`Notifier::share`]).
pub type Duty = Arc<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier over `store`, sending to `settings.receivers`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built (no TLS roots).
    pub fn new(
        store: Store,
        clock: SharedClock,
        metrics: Arc<Metrics>,
        settings: NotifierSettings,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("linetokd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(Self {
            store,
            clock,
            metrics,
            client,
            settings: RwLock::new(Arc::new(settings)),
            reloaded: Notify::new(),
            spacing: Mutex::new(HashMap::new()),
            last_prune: Mutex::new(None),
            duty: Mutex::new(None),
        }))
    }

    /// Under `[ha]`: notify only while `duty` says this instance holds the
    /// daemon-wide duties, and look at the shared store at least every
    /// `every` (alerts other instances raise wake nothing here).
    pub fn share(&self, duty: Duty, every: chrono::Duration) {
        *self.duty.lock().unwrap_or_else(PoisonError::into_inner) = Some((duty, every));
    }

    /// Replaces the settings (a reload) and wakes the task. State of a
    /// receiver that kept its name carries on.
    pub fn set_settings(&self, settings: NotifierSettings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
        self.reloaded.notify_one();
    }

    fn settings(&self) -> Arc<NotifierSettings> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Runs until `cancel`: a step at start (a previous run may have left
    /// a notification in flight), then one whenever alerts change (at most
    /// one a second for changes), the settings change, or the next due time
    /// comes.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut changed = self.store.subscribe_alerts();
        loop {
            changed.borrow_and_update();
            // When this step began (real time): the changes it may have
            // missed came after.
            let stepped = tokio::time::Instant::now();
            let shared = self
                .duty
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            if let Some((duty, every)) = &shared
                && !duty()
            {
                // Another instance notifies; look again in a while. The
                // firing gauge still follows the shared store, so it does
                // not keep what this instance raised before it handed a
                // channel over.
                if let Err(e) = self.refresh_firing().await {
                    tracing::warn!(error = %crate::logging::error_chain(&e), "could not read the alerts for linetokd_alerts_firing");
                }
                let at = self.clock.now() + *every;
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = self.clock.sleep_until(at) => {}
                }
                continue;
            }
            let next = match self.step().await {
                Ok(next) => next,
                Err(e) if e.is_fatal() => {
                    tracing::error!(error = %crate::logging::error_chain(&e), "alert notifier stopped");
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %crate::logging::error_chain(&e), "alert notifier could not use the database; trying again");
                    Some(self.clock.now() + STORE_RETRY)
                }
            };
            let next = match &shared {
                Some((_, every)) => {
                    let soon = self.clock.now() + *every;
                    Some(next.map_or(soon, |at| at.min(soon)))
                }
                None => next,
            };
            let clock = Arc::clone(&self.clock);
            let sleep = async move {
                match next {
                    Some(at) => clock.sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let by_change = tokio::select! {
                () = cancel.cancelled() => return,
                changed = changed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    true
                }
                () = self.reloaded.notified() => false,
                () = sleep => false,
            };
            // Alerts change in bursts (a bootstrap raises and resolves one
            // per group): a step reads every alert, so changes wake it at
            // most once per CHANGE_GAP, each step taking in all changes
            // made meanwhile; a resolve may go out that much later. This
            // bounds CPU work, so it is real time, not the clock's: on a
            // manual clock it must not look like a due time (the
            // simulation moves its clock to the daemon's next sleeper).
            if by_change {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(stepped + CHANGE_GAP) => {}
                }
            }
        }
    }

    /// Sends everything due now and returns when something next falls
    /// due (`None`: nothing will without a change).
    ///
    /// # Errors
    /// A store error; what was sent before it is recorded.
    pub async fn step(self: &Arc<Self>) -> Result<Option<DateTime<Utc>>, StoreError> {
        let settings = self.settings();
        let now = self.clock.now();
        // A line receiver out of quota is an alert for the others, until
        // the month turns (then it is looked at again).
        let (out_of_quota, mut waiting) = self.judge_line_quotas(&settings, now).await?;
        let mut held_back: Vec<String> = Vec::new();
        for round in 0..MAX_ROUNDS {
            let now = if round == 0 { now } else { self.clock.now() };
            let (alerts, states) = self
                .db(move |s| {
                    Ok((
                        s.alerts_to_notify(now - LOOKBACK)?,
                        s.notification_states()?,
                    ))
                })
                .await?;
            if round == 0 {
                self.count_firing(&alerts);
            }
            let routes: Vec<ReceiverRoute> = settings
                .receivers
                .iter()
                // A line receiver out of quota is not routed to until the
                // month turns: what still fires then is sent then.
                .filter(|r| !held_back.contains(&r.name) && !out_of_quota.contains(&r.name))
                .map(|r| ReceiverRoute {
                    name: r.name.clone(),
                    min_severity: r.min_severity,
                    repeat: r.repeat(),
                })
                .collect();
            let routing = route::route(now, &alerts, &states, &routes, &settings.route);
            if routing.due.is_empty() && routing.give_up.is_empty() {
                self.prune(now).await?;
                return Ok(min_time(routing.next_at, waiting));
            }
            for g in routing.give_up {
                tracing::error!(
                    receiver = %g.receiver,
                    attempts = g.attempts,
                    alerts = g.alerts,
                    "alert notification given up after 24 h of failed attempts"
                );
                let (receiver, id) = (g.receiver.clone(), g.id);
                self.db(move |s| s.finish_notification(now, &receiver, &id, false))
                    .await?;
                self.metrics
                    .alert_notification(&g.receiver, "given_up", std::time::Duration::ZERO);
            }
            // Receivers are sent to at once: one that is slow or down must
            // not hold up the others.
            let alerts = Arc::new(alerts);
            let mut sends = tokio::task::JoinSet::new();
            let mut claimed: Vec<&str> = Vec::new();
            for due in routing.due {
                let Some(receiver) = settings.receivers.iter().find(|r| r.name == due.receiver)
                else {
                    continue;
                };
                if let Some(url) = receiver.rate_limited_url() {
                    // Two receivers may share a Slack URL: one message a
                    // second between them too.
                    let not_before = if claimed.contains(&url) {
                        Some(now + SLACK_SPACING)
                    } else {
                        self.spacing
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get(url)
                            .copied()
                    };
                    if let Some(at) = not_before.filter(|at| *at > now) {
                        waiting = min_time(waiting, Some(at));
                        held_back.push(receiver.name.clone());
                        continue;
                    }
                    claimed.push(url);
                }
                let (me, settings, receiver, alerts) = (
                    Arc::clone(self),
                    Arc::clone(&settings),
                    receiver.clone(),
                    Arc::clone(&alerts),
                );
                sends.spawn(async move { me.deliver(&settings, &receiver, due, &alerts).await });
            }
            let mut failed = None;
            while let Some(done) = sends.join_next().await {
                let done = done.unwrap_or_else(|e| {
                    Err(StoreError::Internal {
                        what: format!("an alert notification task failed: {e}"),
                    })
                });
                if let Err(e) = done {
                    failed.get_or_insert(e);
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(Some(self.clock.now()))
    }

    /// Raises `line_receiver_quota` (daemon-wide, labelled with the
    /// receiver) for every `line` receiver that can push nothing more this
    /// month (LINE answered 429, or its budget cannot fit one more
    /// notification) and resolves it for the others. Returns the
    /// receivers out of quota, and the start of next month when any is, so
    /// the month's turn resolves it.
    async fn judge_line_quotas(
        &self,
        settings: &NotifierSettings,
        now: DateTime<Utc>,
    ) -> Result<(Vec<String>, Option<DateTime<Utc>>), StoreError> {
        let month = now.format("%Y-%m").to_string();
        let lines: Vec<(String, u32, u32)> = settings
            .receivers
            .iter()
            .filter_map(|r| match &r.kind {
                ReceiverKind::Line {
                    to, monthly_budget, ..
                } => Some((
                    r.name.clone(),
                    u32::try_from(to.len()).unwrap_or(u32::MAX),
                    *monthly_budget,
                )),
                _ => None,
            })
            .collect();
        let specs = self
            .db(move |s| {
                let mut specs = Vec::new();
                let mut out = Vec::new();
                for (name, wanted, budget) in lines {
                    let (used, stopped) = s.receiver_month(&name, &month)?;
                    let why = if stopped {
                        format!("LINE refused a push with its monthly message limit (429) in {month}")
                    } else if used.saturating_add(wanted) > budget {
                        format!(
                            "its monthly_message_budget ({budget}) is spent for {month} ({used} sent)"
                        )
                    } else {
                        continue;
                    };
                    out.push(name.clone());
                    specs.push(AlertSpec {
                        group: None,
                        label: Some(AlertLabel {
                            name: "receiver",
                            value: name.clone(),
                        }),
                        alertname: LINE_RECEIVER_QUOTA,
                        severity: "warning",
                        summary: format!(
                            "the line receiver {name} pushes nothing more until the month turns: {why}"
                        ),
                    });
                }
                let scope = AlertScope {
                    channel: None,
                    group: None,
                    names: &[LINE_RECEIVER_QUOTA],
                };
                s.sync_alerts(now, scope, &specs)?;
                Ok(out)
            })
            .await?;
        let next = (!specs.is_empty()).then(|| next_month(now));
        Ok((specs, next))
    }

    /// Records, renders, screens, sends and records one notification.
    async fn deliver(
        &self,
        settings: &NotifierSettings,
        receiver: &Receiver,
        due: Due,
        alerts: &[AlertRecord],
    ) -> Result<(), StoreError> {
        let now = self.clock.now();
        let name = receiver.name.clone();
        let id = match &due.retry_of {
            Some(id) => id.clone(),
            None => {
                let id = new_id();
                let (n, i, items) = (name.clone(), id.clone(), due.items.clone());
                self.db(move |s| s.begin_notification(now, &n, &i, &items))
                    .await?;
                id
            }
        };
        let told = self.tell(settings, &due, alerts).await?;
        let ctx = Context {
            receiver: &name,
            external_url: settings.external_url.as_deref(),
        };
        // A LINE push needs the current token of its group and room in the
        // month's budget.
        let mut line_month: Option<String> = None;
        let mut token = None;
        let mut refusal: Option<Outcome> = None;
        if let ReceiverKind::Line {
            channel,
            group,
            to,
            monthly_budget,
            ..
        } = &receiver.kind
        {
            let month = now.format("%Y-%m").to_string();
            let (n, m) = (name.clone(), month.clone());
            let (used, stopped) = self.db(move |s| s.receiver_month(&n, &m)).await?;
            let wanted = u32::try_from(to.len()).unwrap_or(u32::MAX);
            if stopped {
                refusal = Some(Outcome::Rejected {
                    reason: format!("LINE's monthly message limit was reached in {month}"),
                });
            } else if used.saturating_add(wanted) > *monthly_budget {
                refusal = Some(Outcome::Rejected {
                    reason: format!(
                        "its monthly_message_budget ({monthly_budget}) is spent for {month} \
                         ({used} sent, {wanted} more needed)"
                    ),
                });
            } else {
                token = settings.tokens.current(channel, group);
                if token.is_none() {
                    refusal = Some(Outcome::Failed {
                        reason: format!(
                            "group {group} of channel {channel} has no current token to push with"
                        ),
                        retry_after: None,
                    });
                }
            }
            line_month = Some(month);
        }
        let requests = send::requests(receiver, ctx, &id, now, &told, token.as_ref());
        let bodies: Vec<String> = requests.iter().map(|r| r.body.clone()).collect();
        let leaks = self
            .db(move |s| {
                for body in &bodies {
                    if s.holds_token(body)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            })
            .await?;
        if leaks || told.is_empty() {
            if leaks {
                tracing::error!(receiver = %name, "alert notification withheld: it held a token value");
                self.metrics
                    .alert_notification(&name, "withheld", std::time::Duration::ZERO);
            }
            let (n, i) = (name.clone(), id.clone());
            return self
                .db(move |s| s.finish_notification(now, &n, &i, false))
                .await;
        }
        let started = std::time::Instant::now();
        let mut outcomes = Vec::with_capacity(requests.len());
        if let Some(refused) = refusal {
            outcomes.push(refused);
        } else {
            for request in &requests {
                outcomes.push(send::post(&self.client, receiver.timeout, request).await);
            }
        }
        if let Some(month) = line_month {
            let pushed = outcomes
                .iter()
                .filter(|o| **o == Outcome::Delivered)
                .count();
            let pushed = u32::try_from(pushed).unwrap_or(u32::MAX);
            let stop = outcomes.contains(&Outcome::QuotaExhausted);
            if pushed > 0 || stop {
                let n = name.clone();
                self.db(move |s| s.record_receiver_month(&n, &month, pushed, stop))
                    .await?;
            }
        }
        let took = started.elapsed();
        // Alertmanager instances of a cluster share what one of them got,
        // and firing alerts are pushed again every resend_interval: one
        // instance taking the push is delivery. One that is down must not
        // hold every later alert back behind a day of retries.
        let any_took = outcomes.contains(&Outcome::Delivered);
        let outcome = if any_took && matches!(receiver.kind, ReceiverKind::Alertmanager { .. }) {
            for failed in outcomes.iter().filter(|o| **o != Outcome::Delivered) {
                tracing::warn!(receiver = %name, outcome = ?failed, "an Alertmanager instance did not take the push; another did");
            }
            Outcome::Delivered
        } else {
            Outcome::combine(outcomes)
        };
        let after = self.clock.now();
        if let Some(url) = receiver.rate_limited_url() {
            self.spacing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(url.to_owned(), after + SLACK_SPACING);
        }
        let (n, i) = (name.clone(), id.clone());
        match outcome {
            Outcome::Delivered => {
                tracing::info!(receiver = %name, alerts = told.len(), attempt = due.attempts + 1, "alert notification delivered");
                self.metrics.alert_notification(&name, "delivered", took);
                self.db(move |s| s.finish_notification(after, &n, &i, true))
                    .await
            }
            Outcome::Rejected { reason } => {
                tracing::error!(receiver = %name, reason = %reason, "alert notification rejected; not retried");
                self.metrics.alert_notification(&name, "rejected", took);
                self.db(move |s| s.finish_notification(after, &n, &i, false))
                    .await
            }
            Outcome::QuotaExhausted => {
                tracing::error!(receiver = %name, "LINE answered 429 (monthly message limit): this receiver pushes nothing more until the month turns");
                self.metrics.alert_notification(&name, "quota", took);
                self.db(move |s| s.finish_notification(after, &n, &i, false))
                    .await
            }
            Outcome::Failed {
                reason,
                retry_after,
            } => {
                let failed = due.attempts + 1;
                let next = route::next_attempt(after, failed, retry_after);
                if failed == 1 {
                    tracing::warn!(receiver = %name, reason = %reason, retry_at = %next, "alert notification failed; retrying");
                } else {
                    tracing::debug!(receiver = %name, reason = %reason, attempt = failed, retry_at = %next, "alert notification failed again");
                }
                self.metrics.alert_notification(&name, "failed", took);
                if let (Some(url), Some(wait)) = (receiver.rate_limited_url(), retry_after) {
                    self.spacing
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .insert(url.to_owned(), after + wait);
                }
                self.db(move |s| s.notification_failed(&n, &i, next)).await
            }
        }
    }

    /// What the notification says about each of its alerts, every text
    /// screened against the stored token values. An alert no longer in the
    /// store (pruned), or firing again in a later episode than the one the
    /// notification is about (a retry outlived it), is left out: the row
    /// now describes the new episode, which is not what was to be said.
    async fn tell(
        &self,
        settings: &NotifierSettings,
        due: &Due,
        alerts: &[AlertRecord],
    ) -> Result<Vec<Told>, StoreError> {
        let mut raw = Vec::new();
        for item in &due.items {
            let Some(a) = alerts
                .iter()
                .find(|a| a.fingerprint == item.fingerprint && a.started_at == item.started_at)
            else {
                continue;
            };
            raw.push((
                a.clone(),
                a.channel_id
                    .as_ref()
                    .and_then(|c| settings.channel_names.name(c))
                    .map(str::to_owned),
                item.kind,
            ));
        }
        self.db(move |s| {
            raw.into_iter()
                .map(|(a, channel_name, kind)| {
                    Ok(Told {
                        fingerprint: s.screen_text(&a.fingerprint)?,
                        channel: a
                            .channel_id
                            .as_ref()
                            .map(|c| s.screen_text(c.as_str()))
                            .transpose()?,
                        channel_name: channel_name.map(|n| s.screen_text(&n)).transpose()?,
                        group: a
                            .group
                            .as_ref()
                            .map(|g| s.screen_text(g.as_str()))
                            .transpose()?,
                        label: a
                            .label
                            .as_ref()
                            .map(|(n, v)| Ok::<_, StoreError>((n.clone(), s.screen_text(v)?)))
                            .transpose()?,
                        alertname: s.screen_text(&a.alertname)?,
                        severity: s.screen_text(&a.severity)?,
                        summary: s.screen_text(&a.summary)?,
                        started_at: a.started_at,
                        resolved_at: a.resolved_at,
                        kind,
                    })
                })
                .collect()
        })
        .await
    }

    /// Sets `linetokd_alerts_firing` from the store, without notifying.
    async fn refresh_firing(&self) -> Result<(), StoreError> {
        let now = self.clock.now();
        let alerts = self.db(move |s| s.alerts_to_notify(now - LOOKBACK)).await?;
        self.count_firing(&alerts);
        Ok(())
    }

    fn count_firing(&self, alerts: &[AlertRecord]) {
        let mut counts: HashMap<(String, String), i64> = HashMap::new();
        for a in alerts.iter().filter(|a| a.resolved_at.is_none()) {
            *counts
                .entry((a.alertname.clone(), a.severity.clone()))
                .or_default() += 1;
        }
        let counts: Vec<(String, String, i64)> =
            counts.into_iter().map(|((a, s), n)| (a, s, n)).collect();
        self.metrics.set_alerts_firing(&counts);
    }

    async fn prune(&self, now: DateTime<Utc>) -> Result<(), StoreError> {
        {
            let mut last = self
                .last_prune
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|at| now - at < PRUNE_EVERY) {
                return Ok(());
            }
            *last = Some(now);
        }
        let receivers: Vec<String> = self
            .settings()
            .receivers
            .iter()
            .map(|r| r.name.clone())
            .collect();
        self.db(move |s| s.prune_notifications(now - LOOKBACK, &receivers))
            .await
            .map(|_| ())
    }

    /// Runs a store call on the blocking pool: rusqlite blocks.
    async fn db<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.store.blocking(f).await
    }
}

/// A fresh notification id: `msg_` and 128 random bits in hex (Standard
/// Webhooks ids are opaque strings; Svix's start `msg_`).
pub(crate) fn new_id() -> String {
    format!("msg_{:032x}", rand::random::<u128>())
}

fn min_time(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The alert for a `line` receiver that can push nothing more this month.
pub const LINE_RECEIVER_QUOTA: &str = "line_receiver_quota";

/// The first instant of the calendar month (UTC) after `now`'s: when a
/// receiver's monthly quota starts afresh.
fn next_month(now: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::{Datelike as _, NaiveDate, TimeZone as _};
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MAX_UTC, |t| Utc.from_utc_datetime(&t))
}
