//! The `plan` report: the forecast run from the world at `now`, written
//! as JSON or as a timeline for people while the forecast runs.
//!
//! Nothing holds the whole timeline: the forecast hands over each day's
//! actions as it finishes the day ([`forecast::forecast_each`]), and each
//! is written and dropped. A year of 100,000 groups is millions of actions
//! (tens of millions with `--all`), which held at once took gigabytes on
//! the host the daemon runs on.

use crate::store::Location;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{self, Write};

use chrono::{DateTime, Utc};
use serde::ser::{Error as _, SerializeMap as _, SerializeSeq as _};
use serde::{Serialize, Serializer};

use super::render::row_line;
use super::{ConfiguredChannel, JSON_VERSION, StoredState, count, severity_name, ts, worlds};
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::forecast::{self, Action, ChannelInput, Routine, SYNTHETIC_KEY_PREFIX};
use crate::policy::{Alert, IssueReason, RevokeReason, Rules};

// ---------------------------------------------------------------------------
// plan

/// How many actions of each kind the forecast holds (`plan --json`'s
/// `counts`).
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

impl PlanCounts {
    /// Counts `action` (the routine reads are counted by the forecast).
    fn note(&mut self, action: &Action) {
        let n = match action {
            Action::Issue { .. } => &mut self.issue,
            Action::Revoke { .. } => &mut self.revoke,
            Action::Expire { .. } => &mut self.expire,
            Action::Verify { .. } | Action::Reconcile => return,
            Action::Alert(_) => &mut self.alert,
        };
        *n = n.saturating_add(1);
    }
}

/// One planned action (an element of `plan --json`'s `actions`).
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

/// How far `linetokd plan` looks, what it lists and how it writes it.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest {
    /// JSON or text.
    pub format: PlanFormat,
    /// The end of the forecast (inclusive).
    pub until: DateTime<Utc>,
    /// `--all`: simulate and list the routine verifies and reconciles.
    pub include_routine: bool,
    /// The most threads the forecast may run on (the timeline is the same
    /// on any number).
    pub threads: usize,
}

/// How `linetokd plan` writes its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// `--json`: one object. Its fields, in order: `version`
    /// ([`JSON_VERSION`]), `from` (now), `until`, `database` (the path, or
    /// the PostgreSQL URL with its password masked), `database_found`
    /// (false: the forecast starts from nothing, as a first start with
    /// this config would), `routine_listed` (`--all`), `actions` (in time
    /// order, each a [`PlannedStatus`]), `counts` ([`PlanCounts`]: they
    /// count the routine reads either way) and `complete` (false when the
    /// forecast stopped early at its loop bound). The last two follow the
    /// actions because they are known only once the actions are written.
    Json,
    /// The timeline as a table, with the counts below it.
    Text,
}

/// Runs the forecast from `now` to `request.until` and writes its report
/// to `out` as it runs. `state` is `None` when there is no database yet.
///
/// # Errors
/// The first error writing to `out`.
pub fn write_plan(
    out: &mut dyn Write,
    now: DateTime<Utc>,
    database: &Location,
    configured: &[ConfiguredChannel],
    rules: &Rules,
    state: Option<&StoredState>,
    request: PlanRequest,
) -> io::Result<()> {
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
    drop(worlds);
    // Taken before the forecast takes the inputs.
    let widths = match request.format {
        PlanFormat::Text => text_widths(now, &names, &inputs),
        PlanFormat::Json => Vec::new(),
    };
    let run = PlanRun {
        now,
        database: database.to_string(),
        database_found: state.is_some(),
        request,
        rules,
        names,
        inputs: Cell::new(inputs),
    };
    match request.format {
        PlanFormat::Json => {
            let mut json = serde_json::Serializer::pretty(&mut *out);
            JsonPlan(&run)
                .serialize(&mut json)
                .map_err(io::Error::from)?;
            writeln!(out)
        }
        PlanFormat::Text => write_text(out, &run, &widths),
    }
}

/// One `plan` run: what the report says before its actions, and the
/// forecast's input, taken by the one run of the forecast.
struct PlanRun<'a> {
    now: DateTime<Utc>,
    database: String,
    database_found: bool,
    request: PlanRequest,
    rules: &'a Rules,
    /// Each channel's name, by ID.
    names: BTreeMap<ChannelId, String>,
    inputs: Cell<Vec<ChannelInput>>,
}

/// What a plan's report says after its actions.
struct PlanTail {
    counts: PlanCounts,
    complete: bool,
}

impl PlanRun<'_> {
    /// Runs the forecast, handing `each` the actions the report lists (the
    /// routine reads only with `--all`), in time order. The forecast's
    /// input is taken: a second call forecasts nothing.
    fn forecast<E>(
        &self,
        mut each: impl FnMut(PlannedStatus) -> Result<(), E>,
    ) -> Result<PlanTail, E> {
        let PlanRequest {
            until,
            include_routine,
            threads,
            ..
        } = self.request;
        let routine = if include_routine {
            Routine::Simulate
        } else {
            Routine::Skip
        };
        let mut counts = PlanCounts::default();
        let inputs = self.inputs.take();
        let summary =
            forecast::forecast_each(self.now, inputs, self.rules, until, routine, threads, |a| {
                counts.note(&a.action);
                if include_routine || !a.action.is_routine() {
                    each(planned_status(&a, &self.names))
                } else {
                    Ok(())
                }
            })?;
        if let Some((verifies, reconciles)) = summary.routine {
            counts.verify = Some(count(verifies));
            counts.reconcile = Some(count(reconciles));
        }
        Ok(PlanTail {
            counts,
            complete: summary.complete,
        })
    }
}

/// `plan --json`, serialized as the forecast runs ([`PlanFormat::Json`]).
struct JsonPlan<'a>(&'a PlanRun<'a>);

impl Serialize for JsonPlan<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let run = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("version", &JSON_VERSION)?;
        map.serialize_entry("from", &run.now)?;
        map.serialize_entry("until", &run.request.until)?;
        map.serialize_entry("database", &run.database)?;
        map.serialize_entry("database_found", &run.database_found)?;
        map.serialize_entry("routine_listed", &run.request.include_routine)?;
        let tail = Cell::new(None);
        map.serialize_entry("actions", &JsonActions { run, tail: &tail })?;
        let tail = tail
            .take()
            .ok_or_else(|| S::Error::custom("the plan's actions were not written"))?;
        map.serialize_entry("counts", &tail.counts)?;
        map.serialize_entry("complete", &tail.complete)?;
        map.end()
    }
}

/// The `actions` array: the forecast itself, run as it is serialized; what
/// follows the actions goes to `tail`.
struct JsonActions<'a> {
    run: &'a PlanRun<'a>,
    tail: &'a Cell<Option<PlanTail>>,
}

impl Serialize for JsonActions<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(None)?;
        let tail = self.run.forecast(|a| seq.serialize_element(&a))?;
        self.tail.set(Some(tail));
        seq.end()
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

/// The plan as a timeline table ([`PlanFormat::Text`]). The columns'
/// widths are set before the first row, from the config's and the store's
/// names: no row waits for the last to be known.
fn write_text(out: &mut dyn Write, run: &PlanRun<'_>, widths: &[usize]) -> io::Result<()> {
    writeln!(
        out,
        "linetokd plan from {} to {}, assuming every call to LINE succeeds",
        ts(run.now),
        ts(run.request.until)
    )?;
    if !run.database_found {
        writeln!(
            out,
            "no database at {}: planning from nothing, as a first start with this config would",
            run.database
        )?;
    }
    let header = TEXT_HEADER.map(str::to_owned);
    let (mut rows, mut any_synthetic) = (0_usize, false);
    let tail = run.forecast(|a| {
        if rows == 0 {
            writeln!(out)?;
            writeln!(out, "{}", row_line("", widths, &header))?;
        }
        rows += 1;
        any_synthetic |= a.synthetic_key;
        let key = a
            .key_id
            .as_ref()
            .map_or_else(|| "-".to_owned(), ToString::to_string);
        let cells = [
            ts(a.at),
            a.channel_name,
            a.group.to_string(),
            a.action.to_owned(),
            key,
            a.message,
        ];
        writeln!(out, "{}", row_line("", widths, &cells))
    })?;
    if rows == 0 {
        writeln!(out, "\nnothing to do in this period")?;
    }
    let c = &tail.counts;
    let routine = match (c.verify, c.reconcile) {
        (Some(verify), Some(reconcile)) => {
            format!("{verify} verify(ies) and {reconcile} reconcile(s)")
        }
        _ => "routine verifies and reconciles not simulated (--all simulates and lists them)"
            .to_owned(),
    };
    writeln!(
        out,
        "\n{} issue(s), {} revocation(s), {} expiry(ies), {} alert(s); {routine}",
        c.issue, c.revoke, c.expire, c.alert,
    )?;
    if any_synthetic {
        writeln!(
            out,
            "keys named {SYNTHETIC_KEY_PREFIX}N stand for tokens not issued yet: LINE picks their key IDs"
        )?;
    }
    if !tail.complete {
        writeln!(
            out,
            "the forecast stopped early (too many steps): the timeline ends before {}",
            ts(run.request.until)
        )?;
    }
    Ok(())
}

/// The width of each column but the last of the plan's table: the widest
/// of the header, and of every name the forecast can list: channel names,
/// group names, action names, and key IDs (stored ones, and LINE's 22
/// characters for the synthetic ones, which are shorter).
fn text_widths(
    now: DateTime<Utc>,
    names: &BTreeMap<ChannelId, String>,
    inputs: &[ChannelInput],
) -> Vec<usize> {
    let longest = |names: &mut dyn Iterator<Item = usize>| names.max().unwrap_or(0);
    let groups = || inputs.iter().flat_map(|c| &c.groups);
    let known = [
        ts(now).chars().count(),
        longest(&mut names.values().map(|n| n.chars().count())),
        longest(&mut groups().map(|g| g.group.as_str().chars().count())),
        longest(&mut ACTION_NAMES.iter().map(|a| a.len())),
        longest(
            &mut groups()
                .flat_map(|g| &g.tokens)
                .map(|t| t.key_id.as_str().chars().count())
                .chain([LINE_KEY_ID_LEN]),
        ),
    ];
    TEXT_HEADER
        .iter()
        .zip(known)
        .map(|(h, k)| h.chars().count().max(k))
        .collect()
}

/// The plan table's header.
const TEXT_HEADER: [&str; 6] = ["TIME", "CHANNEL", "GROUP", "ACTION", "KEY", "DETAIL"];

/// Every `action` a plan lists.
const ACTION_NAMES: [&str; 6] = ["issue", "revoke", "expire", "verify", "reconcile", "alert"];

/// The length of a key ID LINE gives (22 base64url characters).
const LINE_KEY_ID_LEN: usize = 22;
