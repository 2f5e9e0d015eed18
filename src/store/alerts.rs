//! Alerts the engine raised, kept as rows: one per fingerprint (channel,
//! group, alert name), with when it started, when it was last seen and
//! when it resolved. A restart neither forgets what is firing nor raises it
//! again; `status` lists what fires.
//!
//! The engine hands [`Store::sync_alerts`] the complete set of conditions a
//! channel has at one instant; the store raises what is new, resolves what
//! is gone, and reports both so the engine logs each edge once.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::events::insert_event;
use super::{EventKind, Fail, Store, StoreError, millis, screen, time_at};
use crate::domain::{ChannelId, GroupName};

/// One alert condition, as the engine states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSpec {
    /// The group it concerns; `None` for the channel as a whole.
    pub group: Option<GroupName>,
    /// A stable name, e.g. `no_live_token` (the fingerprint's last part).
    pub alertname: &'static str,
    /// `warning` or `critical`.
    pub severity: &'static str,
    /// A sentence for people (never a token value: screened).
    pub summary: String,
}

/// A firing alert as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiringAlert {
    /// `channel/group/alertname`.
    pub fingerprint: String,
    /// The channel.
    pub channel_id: ChannelId,
    /// The group, if any.
    pub group: Option<GroupName>,
    /// Its name.
    pub alertname: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// The latest sentence.
    pub summary: String,
    /// When it started firing.
    pub started_at: DateTime<Utc>,
}

/// What [`Store::sync_alerts`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertChanges {
    /// Alerts that started firing now.
    pub raised: Vec<AlertSpec>,
    /// Fingerprints that stopped firing now.
    pub resolved: Vec<String>,
}

/// The fingerprint of an alert: what identifies it across restarts.
pub fn fingerprint(channel: &ChannelId, group: Option<&GroupName>, alertname: &str) -> String {
    format!(
        "{}/{}/{}",
        channel,
        group.map_or("-", GroupName::as_str),
        alertname
    )
}

impl Store {
    /// The alerts firing on a channel (or on every channel with `None`),
    /// oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn firing_alerts(
        &self,
        channel: Option<&ChannelId>,
    ) -> Result<Vec<FiringAlert>, StoreError> {
        self.read("listing firing alerts", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT fingerprint, channel_id, group_name, alertname, severity, summary, started_at \
                 FROM alerts WHERE resolved_at IS NULL AND (?1 IS NULL OR channel_id = ?1) \
                 ORDER BY started_at, fingerprint",
            )?;
            let mut rows = stmt.query([channel.map(ChannelId::as_str)])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(FiringAlert {
                    fingerprint: row.get("fingerprint")?,
                    channel_id: ChannelId::new(row.get::<_, String>("channel_id")?),
                    group: row.get::<_, Option<String>>("group_name")?.map(GroupName::new),
                    alertname: row.get("alertname")?,
                    severity: row.get("severity")?,
                    summary: row.get("summary")?,
                    started_at: time_at(row, "started_at")?,
                });
            }
            Ok(out)
        })
    }

    /// Makes the channel's firing alerts exactly `now_firing`: raises the
    /// new ones (an `alert_raised` event each), refreshes the ones still
    /// firing, resolves the rest (an `alert_resolved` event each). One
    /// transaction; writes nothing when nothing changed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn sync_alerts(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        now_firing: &[AlertSpec],
    ) -> Result<AlertChanges, StoreError> {
        let firing = self.firing_alerts(Some(channel))?;
        let wanted: Vec<(String, &AlertSpec)> = now_firing
            .iter()
            .map(|a| (fingerprint(channel, a.group.as_ref(), a.alertname), a))
            .collect();
        let mut changes = AlertChanges::default();
        for (fp, spec) in &wanted {
            if !firing.iter().any(|f| &f.fingerprint == fp) {
                changes.raised.push((*spec).clone());
            }
        }
        for f in &firing {
            if !wanted.iter().any(|(fp, _)| fp == &f.fingerprint) {
                changes.resolved.push(f.fingerprint.clone());
            }
        }
        if changes == AlertChanges::default() {
            return Ok(changes);
        }
        self.write("recording alerts", |tx| {
            for spec in &changes.raised {
                let fp = fingerprint(channel, spec.group.as_ref(), spec.alertname);
                let summary = screen(tx, &spec.summary)?;
                tx.execute(
                    "INSERT INTO alerts (fingerprint, channel_id, group_name, alertname, severity, \
                     summary, started_at, last_seen_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                     ON CONFLICT (fingerprint) DO UPDATE SET severity = ?5, summary = ?6, \
                     started_at = ?7, last_seen_at = ?7, resolved_at = NULL",
                    params![
                        fp,
                        channel.as_str(),
                        spec.group.as_ref().map(GroupName::as_str),
                        spec.alertname,
                        spec.severity,
                        summary,
                        millis(now)
                    ],
                )?;
                insert_event(
                    tx,
                    now,
                    channel,
                    spec.group.as_ref(),
                    None,
                    EventKind::AlertRaised,
                    &format!("{} ({}): {summary}", spec.alertname, spec.severity),
                )?;
            }
            for fp in &changes.resolved {
                let group: Option<String> = tx.query_row(
                    "SELECT group_name FROM alerts WHERE fingerprint = ?1",
                    [fp],
                    |row| row.get(0),
                )?;
                tx.execute(
                    "UPDATE alerts SET resolved_at = ?2, last_seen_at = ?2 WHERE fingerprint = ?1",
                    params![fp, millis(now)],
                )?;
                let name = fp.rsplit('/').next().unwrap_or(fp);
                insert_event(
                    tx,
                    now,
                    channel,
                    group.map(GroupName::new).as_ref(),
                    None,
                    EventKind::AlertResolved,
                    name,
                )?;
            }
            Ok::<(), Fail>(())
        })?;
        self.alerts_changed();
        Ok(changes)
    }
}
