//! The `plan` report: the forecast run from the world at `now`, its JSON
//! shape and its timeline for people.

use crate::store::Location;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{
    ConfiguredChannel, JSON_VERSION, StoredState, count, severity_name, table, ts, worlds,
};
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::forecast::{self, Action, ChannelInput, Routine, SYNTHETIC_KEY_PREFIX};
use crate::policy::{Alert, IssueReason, RevokeReason, Rules};

// ---------------------------------------------------------------------------
// plan

/// `linetokd plan --json`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    /// [`JSON_VERSION`].
    pub version: u32,
    /// Where the forecast starts (now).
    pub from: DateTime<Utc>,
    /// Where it ends.
    pub until: DateTime<Utc>,
    /// The database read: its path, or its PostgreSQL URL with the password
    /// masked.
    pub database: String,
    /// False when there was no database: the forecast starts from nothing,
    /// as a first start with this config would.
    pub database_found: bool,
    /// False when the forecast stopped early (its loop bound).
    pub complete: bool,
    /// Verifies and reconciles are listed only when asked for (`--all`);
    /// `counts` counts them either way.
    pub routine_listed: bool,
    /// How many actions of each kind the forecast holds.
    pub counts: PlanCounts,
    /// What happens, in time order.
    pub actions: Vec<PlannedStatus>,
}

/// Actions by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PlanCounts {
    /// Tokens issued.
    pub issue: u32,
    /// Tokens revoked.
    pub revoke: u32,
    /// Tokens expiring.
    pub expire: u32,
    /// Verifications; `null` unless `--all`, which simulates every one.
    pub verify: Option<u32>,
    /// Reconciles; `null` unless `--all`.
    pub reconcile: Option<u32>,
    /// Alerts raised.
    pub alert: u32,
}

/// One planned action.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedStatus {
    /// When.
    pub at: DateTime<Utc>,
    /// The channel ID.
    pub channel: ChannelId,
    /// The channel's name.
    pub channel_name: String,
    /// The group.
    pub group: GroupName,
    /// `issue`, `revoke`, `expire`, `verify`, `reconcile` or `alert`.
    pub action: &'static str,
    /// The token, where there is one. Tokens the forecast imagines issued
    /// get synthetic key IDs (`next-1`, ...): LINE picks the real ones.
    pub key_id: Option<KeyId>,
    /// True when `key_id` is synthetic.
    pub synthetic_key: bool,
    /// Why (issue: `no_current`, `due`, `requested`, `incident`; revoke:
    /// `incident`, `excess`, `superseded`, `make_room`, `removed`,
    /// `free_capacity`; alert: `warning` or `critical`).
    pub reason: Option<&'static str>,
    /// For an issue: when the new token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// In words.
    pub message: String,
}

/// How far `linetokd plan` looks and what it lists.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest {
    /// The end of the forecast (inclusive).
    pub until: DateTime<Utc>,
    /// `--all`: simulate and list the routine verifies and reconciles.
    pub include_routine: bool,
    /// The most threads the forecast may run on (the timeline is the same
    /// on any number).
    pub threads: usize,
}

/// Runs the forecast from `now` to `request.until` and builds its report.
/// `state` is `None` when there is no database yet.
pub fn plan_report(
    now: DateTime<Utc>,
    database: &Location,
    configured: &[ConfiguredChannel],
    rules: &Rules,
    state: Option<&StoredState>,
    request: PlanRequest,
) -> PlanReport {
    let PlanRequest {
        until,
        include_routine,
        threads,
    } = request;
    let empty = StoredState::empty();
    let worlds = worlds(now, configured, state.unwrap_or(&empty));
    let names: BTreeMap<ChannelId, String> = worlds
        .iter()
        .map(|w| (w.id.clone(), w.name.clone()))
        .collect();
    let inputs: Vec<ChannelInput> = worlds
        .iter()
        .map(|w| ChannelInput {
            channel: w.id.clone(),
            managed: w.managed(),
            groups: w.views(),
            view: w.view.clone(),
        })
        .collect();
    let routine = if include_routine {
        Routine::Simulate
    } else {
        Routine::Skip
    };
    let f = forecast::forecast(now, inputs, rules, until, routine, threads);
    let mut counts = PlanCounts::default();
    for a in &f.actions {
        let n = match a.action {
            Action::Issue { .. } => &mut counts.issue,
            Action::Revoke { .. } => &mut counts.revoke,
            Action::Expire { .. } => &mut counts.expire,
            Action::Verify { .. } | Action::Reconcile => continue,
            Action::Alert(_) => &mut counts.alert,
        };
        *n = n.saturating_add(1);
    }
    if let Some((verifies, reconciles)) = f.routine {
        counts.verify = Some(count(verifies));
        counts.reconcile = Some(count(reconciles));
    }
    let actions = f
        .actions
        .iter()
        .filter(|a| include_routine || !a.action.is_routine())
        .map(|a| planned_status(a, &names))
        .collect();
    PlanReport {
        version: JSON_VERSION,
        from: f.from,
        until: f.until,
        database: database.to_string(),
        database_found: state.is_some(),
        complete: f.complete,
        routine_listed: include_routine,
        counts,
        actions,
    }
}

fn planned_status(
    a: &forecast::PlannedAction,
    names: &BTreeMap<ChannelId, String>,
) -> PlannedStatus {
    let (action, key_id, reason, expires_at, message) = match &a.action {
        Action::Issue {
            key_id,
            reason,
            expires_at,
        } => (
            "issue",
            Some(key_id),
            Some(issue_reason_name(*reason)),
            Some(*expires_at),
            format!("{reason}; expires {}", ts(*expires_at)),
        ),
        Action::Revoke { key_id, reason } => (
            "revoke",
            Some(key_id),
            Some(revoke_reason_name(*reason)),
            None,
            reason.text().to_owned(),
        ),
        Action::Expire { key_id } => (
            "expire",
            Some(key_id),
            None,
            None,
            "reaches its expiry".to_owned(),
        ),
        Action::Verify { key_id } => (
            "verify",
            Some(key_id),
            None,
            None,
            "checked with LINE's verify endpoint".to_owned(),
        ),
        Action::Reconcile => (
            "reconcile",
            None,
            None,
            None,
            "the channel's valid key IDs are listed".to_owned(),
        ),
        Action::Alert(alert) => (
            "alert",
            alert_key(alert),
            Some(severity_name(alert.severity())),
            None,
            alert.to_string(),
        ),
    };
    PlannedStatus {
        at: a.at,
        channel: a.channel.clone(),
        channel_name: names
            .get(&a.channel)
            .cloned()
            .unwrap_or_else(|| a.channel.to_string()),
        group: a.group.clone(),
        action,
        key_id: key_id.cloned(),
        synthetic_key: key_id.is_some_and(forecast::is_synthetic),
        reason,
        expires_at,
        message,
    }
}

fn alert_key(alert: &Alert) -> Option<&KeyId> {
    match alert {
        Alert::ExpiresBeforeSuccessor { key_id, .. } | Alert::RevokeNeedsSecret { key_id, .. } => {
            Some(key_id)
        }
        _ => None,
    }
}

fn issue_reason_name(r: IssueReason) -> &'static str {
    match r {
        IssueReason::NoCurrent => "no_current",
        IssueReason::Due => "due",
        IssueReason::Requested => "requested",
        IssueReason::Incident => "incident",
    }
}

fn revoke_reason_name(r: RevokeReason) -> &'static str {
    match r {
        RevokeReason::Incident => "incident",
        RevokeReason::Excess => "excess",
        RevokeReason::Superseded => "superseded",
        RevokeReason::MakeRoom => "make_room",
        RevokeReason::Removed => "removed",
        RevokeReason::FreeCapacity => "free_capacity",
        RevokeReason::Refused => "refused",
    }
}

/// The plan as a timeline table.
pub fn render_plan(report: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "linetokd plan from {} to {}, assuming every call to LINE succeeds",
        ts(report.from),
        ts(report.until)
    );
    if !report.database_found {
        let _ = writeln!(
            out,
            "no database at {}: planning from nothing, as a first start with this config would",
            report.database
        );
    }
    if report.actions.is_empty() {
        let _ = writeln!(out, "\nnothing to do in this period");
    } else {
        let _ = writeln!(out);
        let mut rows = vec![vec![
            "TIME".to_owned(),
            "CHANNEL".to_owned(),
            "GROUP".to_owned(),
            "ACTION".to_owned(),
            "KEY".to_owned(),
            "DETAIL".to_owned(),
        ]];
        for a in &report.actions {
            rows.push(vec![
                ts(a.at),
                a.channel_name.clone(),
                a.group.to_string(),
                a.action.to_owned(),
                a.key_id
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), ToString::to_string),
                a.message.clone(),
            ]);
        }
        table(&mut out, "", &rows);
    }
    let c = &report.counts;
    let routine = match (c.verify, c.reconcile) {
        (Some(verify), Some(reconcile)) => {
            format!("{verify} verify(ies) and {reconcile} reconcile(s)")
        }
        _ => "routine verifies and reconciles not simulated (--all simulates and lists them)"
            .to_owned(),
    };
    let _ = writeln!(
        out,
        "\n{} issue(s), {} revocation(s), {} expiry(ies), {} alert(s); {routine}",
        c.issue, c.revoke, c.expire, c.alert,
    );
    if report.any_synthetic() {
        let _ = writeln!(
            out,
            "keys named {SYNTHETIC_KEY_PREFIX}N stand for tokens not issued yet: LINE picks their key IDs"
        );
    }
    if !report.complete {
        let _ = writeln!(
            out,
            "the forecast stopped early (too many steps): the timeline ends before {}",
            ts(report.until)
        );
    }
    out
}

impl PlanReport {
    fn any_synthetic(&self) -> bool {
        self.actions.iter().any(|a| a.synthetic_key)
    }
}
