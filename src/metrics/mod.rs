//! Prometheus metrics (docs/design.md section 10).
//!
//! One [`Metrics`] value is shared by the rotator (token and rotation
//! gauges and counters, updated as it plans and acts), the scheduler (its
//! wake-ups), the LINE client's request observer (requests by endpoint and
//! status, with latency), and the config reloader. `GET /metrics` renders it in the Prometheus text format.
//!
//! Labels carry channel IDs, group names and endpoint names only: nothing
//! here ever holds a token. Every per-channel metric carries the channel ID
//! as `channel` (stable: dashboards and alerts key on it) and the
//! configured name as `channel_name` (for people); `app` hands over the
//! names with [`Metrics::set_channel_names`] at start and on every reload.
//!
//! The series every group has (expiry, next rotation, live tokens,
//! issuances) are rows of one table written out at scrape time
//! (`groups.rs`): as `prometheus_client` families they were the largest
//! per-group cost of the daemon after the token itself.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::channel_index::ChannelIndex;
use crate::domain::{ChannelId, GroupName, TokenKind};
use groups::GroupSeries;

pub mod exposition;
mod groups;

/// Every metric's name starts with this and `_`.
const PREFIX: &str = "linetokd";

/// A label value shared by every series that carries it. Per-group series
/// are most of the daemon's memory at 100,000 groups: the channel's ID and
/// name are one allocation per channel (interned in [`Metrics`]), not one
/// per series.
type Label = Arc<str>;

/// The label values of a group: what every per-group series starts with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabelValues {
    /// The channel ID.
    pub channel: Label,
    /// The channel's configured name.
    pub channel_name: Label,
    /// The group name.
    pub group: Label,
}

/// Labels of a per-group family (sink writes, hook runs: groups that have
/// sinks or a hook). One pointer to the values, a key of one word instead
/// of three in each family's hash table. Equal and hashed by the values.
/// The series every group has are rows of [`GroupSeries`] instead.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct GroupLabels {
    /// The group's label values.
    pub values: Arc<GroupLabelValues>,
}

impl EncodeLabelSet for GroupLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.values.encode(encoder)
    }
}

/// Labels of the per-channel token count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnerLabels {
    /// The channel ID.
    pub channel: Label,
    /// The channel's configured name.
    pub channel_name: Label,
    /// `ours` or `foreign`.
    pub owner: &'static str,
    /// The token kind (`v2.1`, `short-lived`): each kind is its own pool
    /// of 30 at LINE.
    pub kind: &'static str,
}

/// Labels of a per-channel counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabels {
    /// The channel ID.
    pub channel: Label,
    /// The channel's configured name.
    pub channel_name: Label,
}

/// Labels of the LINE request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The LINE operation, e.g. `v21_issue`.
    pub endpoint: String,
    /// The HTTP status, or `none` when LINE did not answer.
    pub status: String,
}

/// Labels of the LINE latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// The LINE operation.
    pub endpoint: String,
}

/// Labels of the reload counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `success` or `failure`.
    pub result: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// Every metric linetokd exports.
pub struct Metrics {
    registry: Registry,
    /// Expiry, next rotation, live tokens and issuances of every group.
    groups: Arc<GroupSeries>,
    channel_tokens: Family<OwnerLabels, Gauge>,
    short_lived_evictions: Family<ChannelLabels, Counter>,
    line_requests: Family<RequestLabels, Counter>,
    line_latency: Family<EndpointLabels, Histogram>,
    clock_skew: GaugeF,
    config_reloads: Family<ResultLabels, Counter>,
    scheduler_wakeups: Counter,
    channel_leader: Family<ChannelLabels, Gauge>,
    lease_takeovers: Family<ChannelLabels, Counter>,
    lease_renew_failures: Counter,
    fenced_writes: Counter,
    /// The channels' names, for the `channel_name` label.
    channels: RwLock<ChannelIndex>,
    /// Each configured channel's `channel` and `channel_name` label values.
    channel_labels: RwLock<HashMap<ChannelId, (Label, Label)>>,
    sink_failures: Family<GroupLabels, Counter>,
    sink_last_success: Family<GroupLabels, GaugeF>,
    hook_runs: Family<HookLabels, Counter>,
    alerts_firing: Family<AlertLabels, Gauge>,
    alert_notifications: Family<NotificationLabels, Counter>,
    alert_notification_duration: Family<ReceiverLabels, Histogram>,
    /// Every (alert name, severity) the firing gauge was ever set for, so
    /// [`Metrics::set_alerts_firing`] can zero the ones that stopped.
    alert_names: Mutex<Vec<AlertLabels>>,
    /// Token values at rest ([`DbMetrics`]).
    db: DbMetrics,
    /// Each watched long-lived token's verify result: 1 valid, 0 invalid,
    /// -1 unknown.
    long_lived_valid: Family<ChannelLabels, Gauge>,
    /// When each watched long-lived token was last verified (Unix time).
    long_lived_verified: Family<ChannelLabels, GaugeF>,
    /// Stateless token requests by how they were answered.
    stateless_requests: Family<StatelessLabels, Counter>,
    /// Stateless token calls to LINE by result.
    stateless_issues: Family<StatelessLabels, Counter>,
    /// LINE Login grants per login channel and state.
    login_grants: Family<LoginStateLabels, Gauge>,
    /// LINE Login refreshes by login channel and result.
    login_refreshes: Family<LoginResultLabels, Counter>,
    /// LINE Login grants inside the re-login notice window.
    login_reauth_due: Family<LoginChannelLabels, Gauge>,
    /// LINE Login grant imports by login channel and result.
    login_imports: Family<LoginResultLabels, Counter>,
    /// "Token refused" reports by login channel and what the check found.
    login_refused: Family<LoginResultLabels, Counter>,
}

/// A login channel (its ID: login channels are not in the channel index).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginChannelLabels {
    channel: String,
}

/// A login channel and a grant state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginStateLabels {
    channel: String,
    state: &'static str,
}

/// A login channel and a result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginResultLabels {
    channel: String,
    result: &'static str,
}

/// A channel's labels and a result: the stateless counters' labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatelessLabels {
    channel: Label,
    channel_name: Label,
    result: &'static str,
}

/// Labels of the firing-alerts gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alertname: String,
    severity: String,
}

/// Labels of the alert notification counter: the receiver's name and the
/// result (`delivered`, `failed`, `rejected`, `given_up`, `withheld`,
/// `quota`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    receiver: String,
    result: &'static str,
}

/// Labels of the alert notification latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReceiverLabels {
    receiver: String,
}

/// A group's labels and a hook run's result (`success` or `failure`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    #[prometheus(flatten)]
    group: GroupLabels,
    result: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        // Not registered: written after the registry, a page of groups at
        // a time (`exposition`).
        let groups = Arc::new(GroupSeries::default());
        let channel_tokens = Family::<OwnerLabels, Gauge>::default();
        registry.register(
            "channel_tokens",
            "Live tokens on the channel by kind: ours, foreign, and (under [ha]) listed ones \
             adopted as ours and lost (LINE caps each kind at 30; foreign short-lived tokens \
             cannot be seen)",
            channel_tokens.clone(),
        );
        let short_lived_evictions = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "short_lived_evictions",
            "Short-lived tokens of ours that LINE's verify refused with time left \
             (evicted by a 31st, or revoked outside linetokd)",
            short_lived_evictions.clone(),
        );
        let line_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "line_requests",
            "Requests to LINE by endpoint and HTTP status",
            line_requests.clone(),
        );
        let line_latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "line_request_duration_seconds",
            "Latency of requests to LINE",
            line_latency.clone(),
        );
        let clock_skew = GaugeF::default();
        registry.register(
            "clock_skew_seconds",
            "Local clock minus LINE's Date header at the last answer",
            clock_skew.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Config reloads by result",
            config_reloads.clone(),
        );
        let scheduler_wakeups = Counter::default();
        registry.register(
            "scheduler_wakeups",
            "Times the scheduler woke up to work due channels (zero between due times)",
            scheduler_wakeups.clone(),
        );
        let channel_leader = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "channel_leader",
            "1 while this instance leads the channel under [ha] (holds its lease), else 0",
            channel_leader.clone(),
        );
        let lease_takeovers = Family::<ChannelLabels, Counter>::default();
        registry.register(
            "lease_takeovers",
            "Grants of a channel's lease to this instance after another instance's (or an \
             earlier run's) grant expired or was released",
            lease_takeovers.clone(),
        );
        let lease_renew_failures = Counter::default();
        registry.register(
            "lease_renew_failures",
            "Lease renewals that were refused or went unanswered (each a step-down)",
            lease_renew_failures.clone(),
        );
        let fenced_writes = Counter::default();
        registry.register(
            "fenced_writes",
            "Writes for a channel refused by its lease fence (this instance no longer led it)",
            fenced_writes.clone(),
        );
        let sink_failures = Family::<GroupLabels, Counter>::default();
        registry.register(
            "sink_failures",
            "Failed writes of the group's sink files (each sink, each attempt)",
            sink_failures.clone(),
        );
        let hook_runs = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_runs",
            "A group's on_rotate hook runs for new tokens, by result (after its retries)",
            hook_runs.clone(),
        );
        let sink_last_success = Family::<GroupLabels, GaugeF>::default();
        registry.register(
            "sink_last_success_timestamp_seconds",
            "When every sink file of the group was last written (Unix time)",
            sink_last_success.clone(),
        );
        let alerts_firing = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "alerts_firing",
            "Alerts firing now, by name and severity",
            alerts_firing.clone(),
        );
        let alert_notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "alert_notifications",
            "Alert notifications by receiver and result: delivered, failed (to be retried), \
             rejected (a 4xx answer or a spent budget), given_up (after 24 h of retries), withheld \
             (held a token), quota (LINE's monthly limit)",
            alert_notifications.clone(),
        );
        let alert_notification_duration =
            Family::<ReceiverLabels, Histogram>::new_with_constructor(|| {
                Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
            });
        registry.register(
            "alert_notification_duration_seconds",
            "How long sending one alert notification took, by receiver",
            alert_notification_duration.clone(),
        );
        let long_lived_valid = Family::<ChannelLabels, Gauge>::default();
        registry.register(
            "long_lived_valid",
            "Whether the channel's watched long-lived token is valid: 1 yes, 0 no (LINE refused it \
             or it belongs to another channel), -1 unknown (not verified yet, or verify failing)",
            long_lived_valid.clone(),
        );
        let long_lived_verified = Family::<ChannelLabels, GaugeF>::default();
        registry.register(
            "long_lived_last_verified_timestamp_seconds",
            "When LINE last answered a verify of the channel's long-lived token (Unix time)",
            long_lived_verified.clone(),
        );
        let stateless_requests = Family::<StatelessLabels, Counter>::default();
        registry.register(
            "stateless_requests",
            "Stateless token requests by result: hit, refresh_ahead (served, a refresh due), miss \
             (issued for this request), coalesced (waited for another request's issue), error",
            stateless_requests.clone(),
        );
        let stateless_issues = Family::<StatelessLabels, Counter>::default();
        registry.register(
            "stateless_issues",
            "Stateless token issues at LINE by result: success, transient, permanent",
            stateless_issues.clone(),
        );
        let login_grants = Family::<LoginStateLabels, Gauge>::default();
        registry.register(
            "login_grants",
            "LINE Login grants per login channel and state (active, needs_login, revoked)",
            login_grants.clone(),
        );
        let login_refreshes = Family::<LoginResultLabels, Counter>::default();
        registry.register(
            "login_refresh",
            "LINE Login grant refreshes by result: success, invalid_grant, invalid_client, \
             rate_limited, transient",
            login_refreshes.clone(),
        );
        let login_reauth_due = Family::<LoginChannelLabels, Gauge>::default();
        registry.register(
            "login_reauth_due",
            "Active LINE Login grants inside the re-login notice window \
             (horizon - reauth_notify_before)",
            login_reauth_due.clone(),
        );
        let login_imports = Family::<LoginResultLabels, Counter>::default();
        registry.register(
            "login_import",
            "LINE Login grant imports by result: imported, replaced, rejected (verify refused \
             the token or it belongs to another channel), failed",
            login_imports.clone(),
        );
        let login_refused = Family::<LoginResultLabels, Counter>::default();
        registry.register(
            "login_token_refused",
            "Checks after a consumer reported a LINE Login access token refused, by result: \
             still_valid (LINE accepts it), refreshed, needs_login, failed",
            login_refused.clone(),
        );
        let db = DbMetrics::register(&mut registry);
        Self {
            login_refused,
            login_grants,
            login_refreshes,
            login_reauth_due,
            login_imports,
            db,
            long_lived_valid,
            long_lived_verified,
            stateless_requests,
            stateless_issues,
            alerts_firing,
            alert_notifications,
            alert_notification_duration,
            alert_names: Mutex::new(Vec::new()),
            scheduler_wakeups,
            channel_leader,
            lease_takeovers,
            lease_renew_failures,
            fenced_writes,
            registry,
            groups,
            channel_tokens,
            short_lived_evictions,
            line_requests,
            line_latency,
            clock_skew,
            config_reloads,
            sink_failures,
            sink_last_success,
            hook_runs,
            channels: RwLock::new(ChannelIndex::new()),
            channel_labels: RwLock::new(HashMap::new()),
        }
    }

    /// Sets the channels' names for the `channel_name` label. When a name
    /// changed or a channel left, the per-channel series are dropped, so no
    /// series keeps a name that is no longer configured: the gauges are set
    /// again by the pass that follows a reload, and the counters start over
    /// under the new name (Prometheus' `rate` and `increase` read that as
    /// a reset). Channels only added change no series.
    pub fn set_channel_names(&self, channels: ChannelIndex) {
        let mut known = self
            .channels
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if *known == channels {
            return;
        }
        let labels: HashMap<ChannelId, (Label, Label)> = channels
            .ids()
            .map(|(id, name)| (id.clone(), (Label::from(id.as_str()), Label::from(name))))
            .collect();
        let only_added = known
            .ids()
            .all(|(id, name)| channels.name(id) == Some(name));
        self.groups.reset(
            labels
                .iter()
                .map(|(id, (_, name))| (id.clone(), Arc::clone(name)))
                .collect(),
            !only_added,
        );
        *self
            .channel_labels
            .write()
            .unwrap_or_else(PoisonError::into_inner) = labels;
        *known = channels;
        if only_added {
            return;
        }
        self.channel_tokens.clear();
        self.short_lived_evictions.clear();
        self.hook_runs.clear();
        self.long_lived_valid.clear();
        self.long_lived_verified.clear();
        self.stateless_requests.clear();
        self.stateless_issues.clear();
        self.channel_leader.clear();
        self.lease_takeovers.clear();
    }

    /// The `channel` and `channel_name` labels of `channel`; an unknown
    /// one gets an empty name.
    fn channel_labels(&self, channel: &ChannelId) -> (Label, Label) {
        self.channel_labels
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(channel)
            .cloned()
            .unwrap_or_else(|| (Label::from(channel.as_str()), Label::from("")))
    }

    fn group_labels(&self, channel: &ChannelId, group: &GroupName) -> GroupLabels {
        GroupLabels {
            values: Arc::new(self.group_label_values(channel, group)),
        }
    }

    fn group_label_values(&self, channel: &ChannelId, group: &GroupName) -> GroupLabelValues {
        let (channel, channel_name) = self.channel_labels(channel);
        GroupLabelValues {
            channel,
            channel_name,
            group: Label::from(group.as_str()),
        }
    }

    /// A shared handle.
    pub fn shared() -> Arc<Self> {
        Arc::new(Self::new())
    }

    /// The Prometheus text exposition of every metric, whole (the HTTP
    /// endpoint streams it instead: [`exposition::Exposition`]).
    pub fn render(&self) -> String {
        exposition::whole(self)
    }
    /// Counts one scheduler wake-up that found channels due.
    pub fn scheduler_woke(&self) {
        self.scheduler_wakeups.inc();
    }

    /// Records a group's state after planning.
    pub fn set_group(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        kind: TokenKind,
        live: usize,
        current_expiry: Option<DateTime<Utc>>,
        next_rotation: Option<DateTime<Utc>>,
    ) {
        // One series per group: a group that changed kind has the other
        // kind's no more.
        self.groups.set(
            channel,
            group,
            kind,
            live,
            current_expiry.map(unix),
            next_rotation.map(unix),
        );
    }

    /// Forgets a group that left the config.
    pub fn remove_group(&self, channel: &ChannelId, group: &GroupName) {
        self.groups.remove_gauges(channel, group);
        self.remove_sinks(channel, group);
    }

    /// Forgets a group's sink metrics (its sinks were deleted).
    pub fn remove_sinks(&self, channel: &ChannelId, group: &GroupName) {
        let labels = self.group_labels(channel, group);
        self.sink_failures.remove(&labels);
        self.sink_last_success.remove(&labels);
    }

    /// Records a channel's live token counts: ours and foreign v2.1 tokens
    /// (LINE lists both), listed ones adopted as ours and lost (under
    /// `[ha]`: a series only while there are any), and our short-lived ones
    /// (nobody can list another issuer's).
    pub fn set_channel(
        &self,
        channel: &ChannelId,
        ours: u32,
        foreign: u32,
        lost: u32,
        ours_short: u32,
    ) {
        let (channel, channel_name) = self.channel_labels(channel);
        for (owner, kind, n) in [
            ("ours", TokenKind::V21, ours),
            ("foreign", TokenKind::V21, foreign),
            ("lost", TokenKind::V21, lost),
            ("ours", TokenKind::ShortLived, ours_short),
        ] {
            let labels = OwnerLabels {
                channel: channel.clone(),
                channel_name: channel_name.clone(),
                owner,
                kind: kind.as_str(),
            };
            if owner == "lost" && n == 0 {
                self.channel_tokens.remove(&labels);
                continue;
            }
            self.channel_tokens.get_or_create(&labels).set(i64::from(n));
        }
    }

    /// Whether this instance leads `channel` (`[ha]`).
    pub fn set_leader(&self, channel: &ChannelId, leads: bool) {
        let (channel, channel_name) = self.channel_labels(channel);
        self.channel_leader
            .get_or_create(&ChannelLabels {
                channel,
                channel_name,
            })
            .set(i64::from(leads));
    }

    /// Counts a grant of `channel`'s lease after an earlier grant ended.
    pub fn lease_takeover(&self, channel: &ChannelId) {
        let (channel, channel_name) = self.channel_labels(channel);
        self.lease_takeovers
            .get_or_create(&ChannelLabels {
                channel,
                channel_name,
            })
            .inc();
    }

    /// Counts a lease renewal refused or unanswered.
    pub fn lease_renew_failed(&self) {
        self.lease_renew_failures.inc();
    }

    /// Counts a write refused by its lease fence.
    pub fn fenced_write(&self) {
        self.fenced_writes.inc();
    }

    /// Counts a short-lived token of ours that LINE's verify refused with
    /// time left.
    pub fn short_lived_evicted(&self, channel: &ChannelId) {
        let (channel, channel_name) = self.channel_labels(channel);
        self.short_lived_evictions
            .get_or_create(&ChannelLabels {
                channel,
                channel_name,
            })
            .inc();
    }

    /// Counts an issuance.
    pub fn rotation(&self, channel: &ChannelId, group: &GroupName, success: bool) {
        self.groups.count_rotation(channel, group, success);
    }

    /// Counts a stateless token request by `result` (`hit`,
    /// `refresh_ahead`, `miss`, `coalesced`, `error`).
    pub fn stateless_request(&self, channel: &ChannelId, result: &'static str) {
        let (channel, channel_name) = self.channel_labels(channel);
        self.stateless_requests
            .get_or_create(&StatelessLabels {
                channel,
                channel_name,
                result,
            })
            .inc();
    }

    /// Counts a stateless token issue at LINE by `result` (`success`,
    /// `transient`, `permanent`).
    pub fn stateless_issue(&self, channel: &ChannelId, result: &'static str) {
        let (channel, channel_name) = self.channel_labels(channel);
        self.stateless_issues
            .get_or_create(&StatelessLabels {
                channel,
                channel_name,
                result,
            })
            .inc();
    }

    /// Sets the number of LINE Login grants of `channel` in `state`.
    pub fn set_login_grants(&self, channel: &ChannelId, state: &'static str, grants: u64) {
        self.login_grants
            .get_or_create(&LoginStateLabels {
                channel: channel.as_str().to_owned(),
                state,
            })
            .set(i64::try_from(grants).unwrap_or(i64::MAX));
    }

    /// Sets how many active grants of `channel` are inside the re-login
    /// notice window.
    pub fn set_login_reauth_due(&self, channel: &ChannelId, grants: u64) {
        self.login_reauth_due
            .get_or_create(&LoginChannelLabels {
                channel: channel.as_str().to_owned(),
            })
            .set(i64::try_from(grants).unwrap_or(i64::MAX));
    }

    /// Counts a LINE Login refresh by `result`.
    pub fn login_refresh(&self, channel: &ChannelId, result: &'static str) {
        self.login_refreshes
            .get_or_create(&LoginResultLabels {
                channel: channel.as_str().to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a checked "token refused" report by `result`.
    pub fn login_refused(&self, channel: &ChannelId, result: &'static str) {
        self.login_refused
            .get_or_create(&LoginResultLabels {
                channel: channel.as_str().to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a LINE Login grant import by `result`.
    pub fn login_import(&self, channel: &ChannelId, result: &'static str) {
        self.login_imports
            .get_or_create(&LoginResultLabels {
                channel: channel.as_str().to_owned(),
                result,
            })
            .inc();
    }

    /// Counts a request to LINE and observes its latency.
    pub fn line_request(&self, endpoint: &str, status: Option<u16>, latency: Duration) {
        self.line_requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.to_owned(),
                status: status.map_or_else(|| "none".to_owned(), |s| s.to_string()),
            })
            .inc();
        self.line_latency
            .get_or_create(&EndpointLabels {
                endpoint: endpoint.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// Sets the firing-alerts gauge to exactly `counts` (alert name,
    /// severity, how many): names that no longer fire drop to zero.
    pub fn set_alerts_firing(&self, counts: &[(String, String, i64)]) {
        // Reset what fired before, so a resolved name reads 0, not its
        // last count.
        // prometheus-client cannot list a family's series, so the names
        // set before are kept beside it.
        let before = std::mem::take(
            &mut *self
                .alert_names
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for labels in &before {
            self.alerts_firing.get_or_create(labels).set(0);
        }
        let mut now = Vec::with_capacity(counts.len());
        for (alertname, severity, n) in counts {
            let labels = AlertLabels {
                alertname: alertname.clone(),
                severity: severity.clone(),
            };
            self.alerts_firing.get_or_create(&labels).set(*n);
            now.push(labels);
        }
        now.extend(before);
        now.sort_by(|a, b| (&a.alertname, &a.severity).cmp(&(&b.alertname, &b.severity)));
        now.dedup();
        *self
            .alert_names
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = now;
    }

    /// Counts one alert notification to `receiver` with `result`, and how
    /// long it took.
    pub fn alert_notification(&self, receiver: &str, result: &'static str, took: Duration) {
        self.alert_notifications
            .get_or_create(&NotificationLabels {
                receiver: receiver.to_owned(),
                result,
            })
            .inc();
        if !took.is_zero() {
            self.alert_notification_duration
                .get_or_create(&ReceiverLabels {
                    receiver: receiver.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }

    /// Sets the measured clock skew.
    pub fn set_clock_skew(&self, skew: chrono::Duration) {
        // Milliseconds are exact in f64 for any realistic skew.
        #[allow(clippy::cast_precision_loss)]
        self.clock_skew.set(skew.num_milliseconds() as f64 / 1000.0);
    }

    /// Counts one finished hook run of a group (after its retries).
    pub fn hook_run(&self, channel: &ChannelId, group: &GroupName, success: bool) {
        let g = self.group_labels(channel, group);
        self.hook_runs
            .get_or_create(&HookLabels {
                group: g,
                result: if success { "success" } else { "failure" },
            })
            .inc();
    }

    /// Counts `failed` failed sink writes of a group (one per sink per
    /// attempt).
    pub fn sink_failures(&self, channel: &ChannelId, group: &GroupName, failed: u64) {
        self.sink_failures
            .get_or_create(&self.group_labels(channel, group))
            .inc_by(failed);
    }

    /// Records that every sink of a group was written at `at`; the failure
    /// counter appears (at 0) from the first write, so a rate over it works
    /// before anything failed.
    pub fn sinks_written(&self, channel: &ChannelId, group: &GroupName, at: DateTime<Utc>) {
        let labels = self.group_labels(channel, group);
        let _ = self.sink_failures.get_or_create(&labels);
        self.sink_last_success.get_or_create(&labels).set(unix(at));
    }

    /// Records the verify result of `channel`'s long-lived token: `Some`
    /// valid or not, `None` unknown; `verified_at` when LINE last answered.
    pub fn set_long_lived(
        &self,
        channel: &ChannelId,
        valid: Option<bool>,
        verified_at: Option<DateTime<Utc>>,
    ) {
        let (channel, channel_name) = self.channel_labels(channel);
        let labels = ChannelLabels {
            channel,
            channel_name,
        };
        self.long_lived_valid
            .get_or_create(&labels)
            .set(match valid {
                Some(true) => 1,
                Some(false) => 0,
                None => -1,
            });
        if let Some(at) = verified_at {
            self.long_lived_verified
                .get_or_create(&labels)
                .set(unix(at));
        }
    }

    /// Drops `channel`'s long-lived series (its `[channel.long_lived]` was
    /// removed by a reload).
    pub fn remove_long_lived(&self, channel: &ChannelId) {
        let (channel, channel_name) = self.channel_labels(channel);
        let labels = ChannelLabels {
            channel,
            channel_name,
        };
        self.long_lived_valid.remove(&labels);
        self.long_lived_verified.remove(&labels);
    }

    /// Counts a config reload.
    pub fn config_reload(&self, success: bool) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: if success { "success" } else { "failure" }.to_owned(),
            })
            .inc();
    }
}

/// The metrics of token values at rest (`[encryption]`): rows per state
/// and key, values that failed to open, values sealed per key.
struct DbMetrics {
    values: Family<DbValueLabels, Gauge>,
    decrypt_failures: Counter,
    encryptions: Family<DbKeyLabels, Counter>,
    /// Every label set `values` was set for, so a key that holds no rows
    /// any more reads 0 instead of its last count.
    seen: Mutex<Vec<DbValueLabels>>,
}

/// `state` (`plaintext` or `encrypted`) and `key_id` (empty for plaintext).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbValueLabels {
    state: &'static str,
    key_id: String,
}

/// A database key's ID.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DbKeyLabels {
    key_id: String,
}

impl DbMetrics {
    fn register(registry: &mut Registry) -> Self {
        let values = Family::<DbValueLabels, Gauge>::default();
        registry.register(
            "db_values",
            "Stored token values by state (plaintext or encrypted) and database key",
            values.clone(),
        );
        let decrypt_failures = Counter::default();
        registry.register(
            "db_decrypt_failures",
            "Stored token values that failed to decrypt",
            decrypt_failures.clone(),
        );
        let encryptions = Family::<DbKeyLabels, Counter>::default();
        registry.register(
            "db_encryptions",
            "Token values encrypted, by database key, since the key was first used",
            encryptions.clone(),
        );
        Self {
            values,
            decrypt_failures,
            encryptions,
            seen: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// Sets the token-values-at-rest metrics from the store's counts: rows
    /// per key (`None` for plaintext), values sealed per key ever, and
    /// values that failed to open since the store was opened. The counters
    /// only move forward.
    pub fn set_db_values(
        &self,
        rows: &[(Option<u32>, u64)],
        sealed: &[(u32, u64)],
        decrypt_failures: u64,
    ) {
        let mut seen = self.db.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let now: Vec<(DbValueLabels, u64)> = rows
            .iter()
            .map(|(key, n)| {
                let labels = DbValueLabels {
                    state: if key.is_some() {
                        "encrypted"
                    } else {
                        "plaintext"
                    },
                    key_id: key.map(|k| k.to_string()).unwrap_or_default(),
                };
                (labels, *n)
            })
            .collect();
        for labels in seen.iter() {
            if !now.iter().any(|(l, _)| l == labels) {
                self.db.values.get_or_create(labels).set(0);
            }
        }
        for (labels, n) in now {
            self.db
                .values
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            if !seen.contains(&labels) {
                seen.push(labels);
            }
        }
        for (key, total) in sealed {
            let counter = self.db.encryptions.get_or_create(&DbKeyLabels {
                key_id: key.to_string(),
            });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
        let failures = &self.db.decrypt_failures;
        failures.inc_by(decrypt_failures.saturating_sub(failures.get()));
    }
}

#[allow(clippy::cast_precision_loss)]
fn unix(at: DateTime<Utc>) -> f64 {
    // Whole seconds: far inside f64's exact integer range.
    at.timestamp() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(channel: &ChannelId, name: &str) -> ChannelIndex {
        [(channel.clone(), name.to_owned())].into_iter().collect()
    }

    #[test]
    fn alerts_that_stop_firing_read_zero_and_notifications_are_counted() {
        let m = Metrics::new();
        m.set_alerts_firing(&[
            ("no_live_token".into(), "critical".into(), 2),
            ("rotation_failing".into(), "warning".into(), 1),
        ]);
        m.set_alerts_firing(&[("no_live_token".into(), "critical".into(), 1)]);
        m.alert_notification("ops", "delivered", Duration::from_millis(20));
        m.alert_notification("ops", "given_up", Duration::ZERO);
        let text = m.render();
        for line in [
            r#"linetokd_alerts_firing{alertname="no_live_token",severity="critical"} 1"#,
            r#"linetokd_alerts_firing{alertname="rotation_failing",severity="warning"} 0"#,
            r#"linetokd_alert_notifications_total{receiver="ops",result="delivered"} 1"#,
            r#"linetokd_alert_notifications_total{receiver="ops",result="given_up"} 1"#,
            r#"linetokd_alert_notification_duration_seconds_count{receiver="ops"} 1"#,
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
    }

    /// 2,500 groups span three pages of each family: every family's
    /// `# HELP`/`# TYPE` lines come once, before its samples, each
    /// group's sample once, a family whose only series is on the last
    /// page still has its header, and the streamed parts are the page.
    #[test]
    fn the_group_series_are_written_a_page_at_a_time_as_one_page() {
        let m = Arc::new(Metrics::new());
        let c = ChannelId::new("1");
        m.set_channel_names(names(&c, "shop-bot"));
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let groups: Vec<GroupName> = (0..2_500)
            .map(|i| GroupName::new(format!("g{i:04}")))
            .collect();
        for g in &groups {
            m.set_group(&c, g, TokenKind::V21, 1, Some(at), None);
        }
        // One group alone has a failure, and one alone a next rotation:
        // wherever the table puts them, their families are each one
        // header and one sample.
        m.rotation(&c, &groups[1_234], false);
        m.set_group(&c, &groups[2_499], TokenKind::V21, 1, Some(at), Some(at));

        let mut page = exposition::Exposition::new(Arc::clone(&m));
        let mut parts = Vec::new();
        while let Some(part) = page.next_chunk() {
            parts.push(part);
        }
        assert!(parts.len() > 1, "one part for 2,500 groups");
        let text = parts.concat();
        assert_eq!(text, m.render());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.last(), Some(&"# EOF"));
        assert_eq!(lines.iter().filter(|l| **l == "# EOF").count(), 1);
        let mut order = Vec::new();
        for family in [
            "token_expiry_timestamp_seconds",
            "next_rotation_timestamp_seconds",
            "live_tokens",
            "rotations",
        ] {
            let header = format!("# TYPE linetokd_{family} ");
            let at: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with(&header))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(at.len(), 1, "{family}: {at:?}");
            let help = format!("# HELP linetokd_{family} ");
            assert_eq!(lines.iter().filter(|l| l.starts_with(&help)).count(), 1);
            let samples: Vec<usize> = lines
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.starts_with(&format!("linetokd_{family}{{"))
                        || l.starts_with(&format!("linetokd_{family}_total{{"))
                })
                .map(|(i, _)| i)
                .collect();
            assert!(
                samples.iter().all(|i| *i > at[0]),
                "{family}: a sample before its header"
            );
            order.push((at[0], samples.len()));
        }
        assert!(order.windows(2).all(|w| w[0].0 < w[1].0), "{order:?}");
        assert_eq!(
            order.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [2_500, 1, 2_500, 1]
        );
        for g in &groups {
            let expiry = format!(
                r#"linetokd_token_expiry_timestamp_seconds{{channel="1",channel_name="shop-bot",group="{g}"}} "#
            );
            assert_eq!(
                lines.iter().filter(|l| l.starts_with(&expiry)).count(),
                1,
                "{g}"
            );
        }
    }

    #[test]
    fn a_group_has_one_kind_and_keeps_its_counters_when_it_leaves() {
        let m = Metrics::new();
        let (c, g) = (ChannelId::new("1"), GroupName::new("backend"));
        m.set_channel_names(names(&c, "shop-bot"));
        // No group yet: the per-group families are left out, as the
        // registry leaves out an empty family.
        assert!(!m.render().contains("linetokd_live_tokens"));
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        m.set_group(&c, &g, TokenKind::V21, 2, Some(at), None);
        m.rotation(&c, &g, false);
        m.rotation(&c, &g, false);
        m.set_group(&c, &g, TokenKind::ShortLived, 1, Some(at), None);
        let text = m.render();
        for needle in [
            "# TYPE linetokd_live_tokens gauge",
            "# HELP linetokd_rotations Token issuances by result.\n",
            "# TYPE linetokd_rotations counter",
            r#"linetokd_live_tokens{channel="1",channel_name="shop-bot",group="backend",kind="short-lived"} 1"#,
            r#"linetokd_rotations_total{channel="1",channel_name="shop-bot",group="backend",result="failure"} 2"#,
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        assert!(!text.contains(r#"kind="v2.1""#), "{text}");
        assert!(!text.contains("linetokd_next_rotation"), "{text}");
        m.remove_group(&c, &g);
        let text = m.render();
        assert!(!text.contains("linetokd_live_tokens"), "{text}");
        assert!(!text.contains("linetokd_token_expiry"), "{text}");
        assert!(text.contains(r#"result="failure"} 2"#), "{text}");
    }

    #[test]
    fn a_renamed_channel_keeps_no_series_under_its_old_name() {
        let m = Metrics::new();
        let (c, g) = (ChannelId::new("1"), GroupName::new("backend"));
        m.set_channel_names(names(&c, "shop-bot"));
        m.set_group(&c, &g, TokenKind::V21, 1, None, None);
        m.rotation(&c, &g, true);
        // A reload that renamed nothing keeps every series, and so does
        // one that only adds a channel.
        m.set_channel_names(names(&c, "shop-bot"));
        let mut more = names(&c, "shop-bot");
        more.insert(ChannelId::new("2"), "news-bot");
        m.set_channel_names(more);
        assert!(m.render().contains(
            r#"linetokd_rotations_total{channel="1",channel_name="shop-bot",group="backend",result="success"} 1"#
        ));
        m.set_channel_names(names(&c, "store-bot"));
        m.set_group(&c, &g, TokenKind::V21, 1, None, None);
        let text = m.render();
        assert!(!text.contains("shop-bot"), "{text}");
        assert!(
            text.contains(
                r#"linetokd_live_tokens{channel="1",channel_name="store-bot",group="backend",kind="v2.1"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_the_design_names_with_labels() {
        let m = Metrics::new();
        let (c, g) = (ChannelId::new("1"), GroupName::new("backend"));
        m.set_channel_names(names(&c, "shop-bot"));
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        m.set_group(&c, &g, TokenKind::V21, 2, Some(at), Some(at));
        m.set_channel(&c, 3, 10, 0, 0);
        m.rotation(&c, &g, true);
        m.line_request("v21_issue", Some(200), Duration::from_millis(30));
        m.config_reload(false);
        m.sinks_written(&c, &g, at);
        m.sink_failures(&c, &g, 2);
        m.hook_run(&c, &g, false);
        m.scheduler_woke();
        m.scheduler_woke();
        let text = m.render();
        for needle in [
            r#"linetokd_token_expiry_timestamp_seconds{channel="1",channel_name="shop-bot",group="backend"} 1800000000"#,
            r#"linetokd_next_rotation_timestamp_seconds{channel="1",channel_name="shop-bot",group="backend"} 1800000000"#,
            r#"linetokd_live_tokens{channel="1",channel_name="shop-bot",group="backend",kind="v2.1"} 2"#,
            r#"linetokd_channel_tokens{channel="1",channel_name="shop-bot",owner="foreign",kind="v2.1"} 10"#,
            r#"linetokd_channel_tokens{channel="1",channel_name="shop-bot",owner="ours",kind="short-lived"} 0"#,
            r#"linetokd_rotations_total{channel="1",channel_name="shop-bot",group="backend",result="success"} 1"#,
            r#"linetokd_line_requests_total{endpoint="v21_issue",status="200"} 1"#,
            r#"linetokd_line_request_duration_seconds_count{endpoint="v21_issue"} 1"#,
            "linetokd_clock_skew_seconds",
            r#"linetokd_config_reloads_total{result="failure"} 1"#,
            r#"linetokd_sink_failures_total{channel="1",channel_name="shop-bot",group="backend"} 2"#,
            r#"linetokd_sink_last_success_timestamp_seconds{channel="1",channel_name="shop-bot",group="backend"} 1800000000"#,
            "linetokd_scheduler_wakeups_total 2",
            r#"linetokd_hook_runs_total{channel="1",channel_name="shop-bot",group="backend",result="failure"} 1"#,
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
