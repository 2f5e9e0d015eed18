//! Alerts the engine raised, kept as rows: one per fingerprint (channel,
//! group, alert name and, for some alerts, one more label), with when it
//! started, when it was last seen and when it resolved. A restart neither
//! forgets what is firing nor raises it again; `status` lists what fires.
//!
//! Each part of the daemon owns some alert names in some scope
//! ([`AlertScope`]): the rotator a channel's policy alerts, delivery a
//! group's sink and hook alerts, `app` the daemon-wide ones. It hands
//! [`Store::sync_alerts`] the complete set of conditions it sees in its
//! scope at one instant; the store raises what is new, resolves what is
//! gone, and reports both so the caller logs each edge once. Alerts of
//! other names or scopes are untouched, so one owner never resolves
//! another's.

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, SqlError, SqlRow, p};
use super::{EventKind, Fail, Store, StoreError, millis, screen};
use crate::domain::{ChannelId, GroupName};

/// The extra label some alerts carry, telling two alerts of one name and
/// group apart: `key_id` of a foreign token, `sink` (its path) of a failing
/// sink, `receiver` of a `line` receiver out of quota.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AlertLabel {
    /// The label's name.
    pub name: &'static str,
    /// Its value (screened when stored).
    pub value: String,
}

/// One alert condition, as its owner states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSpec {
    /// The group it concerns; `None` for the channel (or daemon) as a
    /// whole. Must be inside the scope it is synced in.
    pub group: Option<GroupName>,
    /// The extra label, if this alert has one.
    pub label: Option<AlertLabel>,
    /// A stable name, e.g. `no_live_token` (part of the fingerprint).
    pub alertname: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// A sentence for people (never a token value: screened).
    pub summary: String,
}

/// The alerts one owner states completely: those of `names` on `channel`
/// (`None`: the daemon-wide ones) and, when `group` is set, only that
/// group's.
#[derive(Debug, Clone, Copy)]
pub struct AlertScope<'a> {
    /// The channel, or `None` for alerts about the daemon as a whole.
    pub channel: Option<&'a ChannelId>,
    /// Narrows the scope to one group's alerts.
    pub group: Option<&'a GroupName>,
    /// The alert names the owner raises and resolves.
    pub names: &'a [&'static str],
}

/// An alert as stored: firing, or resolved at `resolved_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// [`fingerprint`] of its channel, group, name and label.
    pub fingerprint: String,
    /// The channel; `None` for an alert about the daemon as a whole.
    pub channel_id: Option<ChannelId>,
    /// The group, if any.
    pub group: Option<GroupName>,
    /// The extra label, if any.
    pub label: Option<(String, String)>,
    /// Its name.
    pub alertname: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The latest sentence (screened when stored).
    pub summary: String,
    /// When this episode started firing.
    pub started_at: DateTime<Utc>,
    /// When it resolved; `None` while it fires.
    pub resolved_at: Option<DateTime<Utc>>,
}

/// What [`Store::sync_alerts`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertChanges {
    /// Alerts that started firing now.
    pub raised: Vec<AlertSpec>,
    /// Alerts that stopped firing now.
    pub resolved: Vec<AlertRecord>,
}

/// The fingerprint of an alert: what identifies it across restarts,
/// `channel/group/alertname` with `-` for a missing channel or group, and
/// `/value` of the extra label appended when there is one.
pub fn fingerprint(
    channel: Option<&ChannelId>,
    group: Option<&GroupName>,
    alertname: &str,
    label: Option<&str>,
) -> String {
    let mut fp = format!(
        "{}/{}/{}",
        channel.map_or("-", ChannelId::as_str),
        group.map_or("-", GroupName::as_str),
        alertname
    );
    if let Some(value) = label {
        fp.push('/');
        fp.push_str(value);
    }
    fp
}

/// The columns [`alert_row`] decodes, in its order.
pub(super) const ALERT_COLUMNS: &str = "fingerprint, channel_id, group_name, label_name, \
     label_value, alertname, severity, summary, started_at, resolved_at";

/// Decodes a row selected with [`ALERT_COLUMNS`], by position (so a query
/// may select more columns after those).
pub(super) fn alert_row(row: &dyn SqlRow) -> Result<AlertRecord, SqlError> {
    let label = match (row.text(3)?, row.text(4)?) {
        (Some(name), Some(value)) => Some((name, value)),
        _ => None,
    };
    Ok(AlertRecord {
        fingerprint: row.get_text(0)?,
        channel_id: row.text(1)?.map(ChannelId::new),
        group: row.text(2)?.map(GroupName::new),
        label,
        alertname: row.get_text(5)?,
        severity: row.get_text(6)?,
        summary: row.get_text(7)?,
        started_at: row.time(8, "alerts.started_at")?,
        resolved_at: row.opt_time(9, "alerts.resolved_at")?,
    })
}

fn firing_in(db: &dyn Db, scope: Option<AlertScope<'_>>) -> Result<Vec<AlertRecord>, Fail> {
    // `IS NOT DISTINCT FROM` matches a NULL channel (daemon-wide) too; it
    // is SQLite's `IS` in words PostgreSQL also knows.
    let channel = scope.and_then(|s| s.channel).map(ChannelId::as_str);
    let alerts = db.query_map(
        &format!(
            "SELECT {ALERT_COLUMNS} FROM alerts WHERE resolved_at IS NULL \
             AND (CAST(?1 AS BIGINT) = 0 OR channel_id IS NOT DISTINCT FROM ?2) \
             ORDER BY started_at, fingerprint{}",
            db.dialect().bytewise()
        ),
        p![scope.is_some(), channel],
        alert_row,
    )?;
    Ok(alerts
        .into_iter()
        .filter(|alert| scope.is_none_or(|s| in_scope(alert, s)))
        .collect())
}

fn in_scope(alert: &AlertRecord, scope: AlertScope<'_>) -> bool {
    alert.channel_id.as_ref() == scope.channel
        && scope.group.is_none_or(|g| alert.group.as_ref() == Some(g))
        && scope.names.contains(&alert.alertname.as_str())
}

/// Alert names delivery owns per group: nobody states them again once
/// their group left the config.
const GROUP_DELIVERY_ALERTS: [&str; 2] = ["sink_failing", "hook_failing"];

/// Resolves the firing alerts nobody will state again under the config
/// being synced (`configured`: each channel with its groups): every alert
/// of a channel no longer configured, and the sink and hook alerts of a
/// group no longer configured. The engine's own alerts of a removed group
/// are left to the rotator, which keeps stating them while the group still
/// holds tokens. Returns how many were resolved.
pub(super) fn resolve_unowned(
    tx: &dyn Db,
    now: DateTime<Utc>,
    configured: &[(&ChannelId, &[GroupName])],
) -> Result<usize, Fail> {
    let unowned: Vec<AlertRecord> = firing_in(tx, None)?
        .into_iter()
        .filter(|a| {
            let Some(channel) = &a.channel_id else {
                return false;
            };
            match configured.iter().find(|(c, _)| *c == channel) {
                None => true,
                Some((_, groups)) => a.group.as_ref().is_some_and(|g| {
                    !groups.contains(g) && GROUP_DELIVERY_ALERTS.contains(&a.alertname.as_str())
                }),
            }
        })
        .collect();
    for a in &unowned {
        tx.execute(
            "UPDATE alerts SET resolved_at = ?2, last_seen_at = ?2 WHERE fingerprint = ?1",
            p![&a.fingerprint, millis(now)],
        )?;
        if let Some(channel) = &a.channel_id {
            insert_event(
                tx,
                now,
                channel,
                a.group.as_ref(),
                None,
                EventKind::AlertResolved,
                &format!("{} (no longer configured)", a.alertname),
            )?;
        }
    }
    Ok(unowned.len())
}

impl Store {
    /// Every alert firing now, daemon-wide and on every channel, oldest
    /// first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn firing_alerts(&self) -> Result<Vec<AlertRecord>, StoreError> {
        self.read_db("listing firing alerts", |db| firing_in(db, None))
    }

    /// States one daemon-wide warning (no channel, no group, no label):
    /// firing with `summary`, or resolved when `None`. The owner of
    /// `alertname` is the only caller that states it.
    ///
    /// # Errors
    ///
    /// As [`Store::sync_alerts`].
    pub fn set_daemon_warning(
        &self,
        now: DateTime<Utc>,
        alertname: &'static str,
        summary: Option<String>,
    ) -> Result<AlertChanges, StoreError> {
        let specs: Vec<AlertSpec> = summary
            .into_iter()
            .map(|summary| AlertSpec {
                group: None,
                label: None,
                alertname,
                severity: "warning",
                summary,
            })
            .collect();
        let scope = AlertScope {
            channel: None,
            group: None,
            names: &[alertname],
        };
        self.sync_alerts(now, scope, &specs)
    }

    /// The alerts firing in `scope`, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn firing_in(&self, scope: AlertScope<'_>) -> Result<Vec<AlertRecord>, StoreError> {
        self.read_db("listing firing alerts", |db| firing_in(db, Some(scope)))
    }

    /// Makes the firing alerts in `scope` exactly `now_firing`: raises the
    /// new ones (an `alert_raised` event each), refreshes the summary of
    /// the ones still firing, resolves the rest (an `alert_resolved` event
    /// each). One transaction; writes nothing when nothing changed. Every
    /// text is screened against the stored token values first: the
    /// returned [`AlertChanges`] carry the screened texts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn sync_alerts(
        &self,
        now: DateTime<Utc>,
        scope: AlertScope<'_>,
        now_firing: &[AlertSpec],
    ) -> Result<AlertChanges, StoreError> {
        let channel = scope.channel;
        let outside = |a: &AlertSpec| {
            !scope.names.contains(&a.alertname)
                || scope.group.is_some_and(|g| a.group.as_ref() != Some(g))
                || (channel.is_none() && a.group.is_some())
        };
        // An alert outside its owner's scope would be resolved by the next
        // sync of whoever owns it: a bug in the caller, caught by tests.
        debug_assert!(
            !now_firing.iter().any(outside),
            "an alert lies outside the scope it was stated in"
        );
        // Every text is screened before anything is compared or reported,
        // so what callers log is what is stored, and a summary the screen
        // changes is not rewritten on every sync.
        let (wanted, firing) = self.read_db("listing firing alerts", |db| {
            let mut wanted: Vec<(String, AlertSpec)> = Vec::new();
            for a in now_firing.iter().filter(|a| !outside(a)) {
                let label = match &a.label {
                    Some(l) => Some(AlertLabel {
                        name: l.name,
                        value: screen(db, &l.value)?,
                    }),
                    None => None,
                };
                let spec = AlertSpec {
                    group: a.group.clone(),
                    summary: screen(db, &a.summary)?,
                    label,
                    alertname: a.alertname,
                    severity: a.severity,
                };
                let fp = fingerprint(
                    channel,
                    spec.group.as_ref(),
                    spec.alertname,
                    spec.label.as_ref().map(|l| l.value.as_str()),
                );
                wanted.push((fp, spec));
            }
            Ok((wanted, firing_in(db, Some(scope))?))
        })?;
        let mut changes = AlertChanges::default();
        let mut refreshed = Vec::new();
        for (fp, spec) in &wanted {
            match firing.iter().find(|f| &f.fingerprint == fp) {
                None => changes.raised.push(spec.clone()),
                Some(f) if f.summary != spec.summary || f.severity != spec.severity => {
                    refreshed.push((fp.clone(), spec));
                }
                Some(_) => {}
            }
        }
        for f in &firing {
            if !wanted.iter().any(|(fp, _)| fp == &f.fingerprint) {
                changes.resolved.push(f.clone());
            }
        }
        if changes == AlertChanges::default() && refreshed.is_empty() {
            return Ok(changes);
        }
        // The events of a daemon-wide alert are kept under the empty
        // channel ID, which no configured channel has.
        let event_channel = channel.cloned().unwrap_or_else(|| ChannelId::new(""));
        self.write_db("recording alerts", |tx| {
            for spec in &changes.raised {
                let label = spec.label.as_ref();
                let fp = fingerprint(
                    channel,
                    spec.group.as_ref(),
                    spec.alertname,
                    label.map(|l| l.value.as_str()),
                );
                let summary = &spec.summary;
                let label_value = label.map(|l| l.value.as_str());
                tx.execute(
                    "INSERT INTO alerts (fingerprint, channel_id, group_name, label_name, \
                     label_value, alertname, severity, summary, started_at, last_seen_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
                     ON CONFLICT (fingerprint) DO UPDATE SET severity = excluded.severity, \
                     summary = excluded.summary, started_at = excluded.started_at, \
                     last_seen_at = excluded.last_seen_at, resolved_at = NULL",
                    p![
                        &fp,
                        channel.map(ChannelId::as_str),
                        spec.group.as_ref().map(GroupName::as_str),
                        label.map(|l| l.name),
                        label_value,
                        spec.alertname,
                        spec.severity,
                        summary,
                        millis(now)
                    ],
                )?;
                let about = label_value.map(|v| format!(" [{v}]")).unwrap_or_default();
                insert_event(
                    tx,
                    now,
                    &event_channel,
                    spec.group.as_ref(),
                    None,
                    EventKind::AlertRaised,
                    &format!("{}{about} ({}): {summary}", spec.alertname, spec.severity),
                )?;
            }
            for (fp, spec) in &refreshed {
                tx.execute(
                    "UPDATE alerts SET severity = ?2, summary = ?3, last_seen_at = ?4 \
                     WHERE fingerprint = ?1",
                    p![fp, spec.severity, &spec.summary, millis(now)],
                )?;
            }
            for f in &changes.resolved {
                tx.execute(
                    "UPDATE alerts SET resolved_at = ?2, last_seen_at = ?2 WHERE fingerprint = ?1",
                    p![&f.fingerprint, millis(now)],
                )?;
                let about = f
                    .label
                    .as_ref()
                    .map(|(_, v)| format!(" [{v}]"))
                    .unwrap_or_default();
                insert_event(
                    tx,
                    now,
                    &event_channel,
                    f.group.as_ref(),
                    None,
                    EventKind::AlertResolved,
                    &format!("{}{about}", f.alertname),
                )?;
            }
            Ok::<(), Fail>(())
        })?;
        if !changes.raised.is_empty() || !changes.resolved.is_empty() {
            self.alerts_changed();
        }
        Ok(changes)
    }
}
