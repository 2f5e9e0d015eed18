//! What each alert receiver was sent: one row per (alert fingerprint,
//! receiver) in `alert_notifications` (schema version 5), so a restart
//! neither pages again inside the repeat interval nor forgets a resolve,
//! and a notification being retried keeps its id.
//!
//! The notifier (`crate::alerting`) reads [`Store::alerts_to_notify`] and
//! [`Store::notification_states`], decides (purely) what is due, and
//! records each notification's life here: [`Store::begin_notification`]
//! before the first request (so the id survives a crash), then
//! [`Store::notification_failed`] per failed attempt and
//! [`Store::finish_notification`] once it was delivered or given up.
//!
//! A row describes one episode of its alert (`started_at` is the alert's):
//! when the alert fires again after a resolve, the row is started afresh.

use chrono::{DateTime, Utc};

use super::alerts::{ALERT_COLUMNS, AlertRecord, alert_row};
use super::sql::{SqlError, SqlRow, p};
use super::{Store, StoreError, millis};

/// What a notification says about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyKind {
    /// It fires.
    Firing,
    /// It resolved.
    Resolved,
}

impl NotifyKind {
    /// As stored (and as Alertmanager spells an alert's status).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Firing => "firing",
            Self::Resolved => "resolved",
        }
    }

    fn parse(text: &str) -> Result<Self, SqlError> {
        match text {
            "firing" => Ok(Self::Firing),
            "resolved" => Ok(Self::Resolved),
            other => Err(SqlError::Column(format!(
                "alert_notifications.pending_kind holds {other:?}"
            ))),
        }
    }
}

/// A notification in flight: sent at least once or about to be, not yet
/// delivered or given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingNotification {
    /// Its stable id (the Standard Webhooks `webhook-id`), the same on
    /// every attempt.
    pub id: String,
    /// What it says about the alert.
    pub kind: NotifyKind,
    /// When it was first attempted.
    pub since: DateTime<Utc>,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When the next attempt is due.
    pub next_at: DateTime<Utc>,
}

/// What one receiver was sent about one episode of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyState {
    /// The alert.
    pub fingerprint: String,
    /// The receiver's name.
    pub receiver: String,
    /// The alert's `started_at` this row describes.
    pub started_at: DateTime<Utc>,
    /// When a firing notification was last delivered or given up.
    pub last_sent_at: Option<DateTime<Utc>>,
    /// Firing notifications delivered in this episode.
    pub sent_count: u32,
    /// True once the resolve was delivered or given up.
    pub resolve_sent: bool,
    /// The notification in flight, if any.
    pub pending: Option<PendingNotification>,
}

/// One alert a notification carries: the fingerprint, the episode and what
/// is said about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyItem {
    /// The alert.
    pub fingerprint: String,
    /// The episode (`alerts.started_at`).
    pub started_at: DateTime<Utc>,
    /// Firing or resolved.
    pub kind: NotifyKind,
}

impl Store {
    /// The alerts firing now and those resolved at or after `since`,
    /// oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn alerts_to_notify(&self, since: DateTime<Utc>) -> Result<Vec<AlertRecord>, StoreError> {
        self.read_db("listing alerts to notify", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT {ALERT_COLUMNS} FROM alerts \
                     WHERE resolved_at IS NULL OR resolved_at >= ?1 \
                     ORDER BY started_at, fingerprint{}",
                    db.dialect().bytewise()
                ),
                p![millis(since)],
                alert_row,
            )?)
        })
    }

    /// Every receiver's notification state, by fingerprint and receiver
    /// (their bytes, on both backends).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn notification_states(&self) -> Result<Vec<NotifyState>, StoreError> {
        self.read_db("reading alert notification state", |db| {
            let c = db.dialect().bytewise();
            Ok(db.query_map(
                &format!(
                    "SELECT fingerprint, receiver, started_at, last_sent_at, sent_count, \
                     resolve_sent, pending_id, pending_kind, pending_since, pending_attempts, \
                     pending_next_at FROM alert_notifications \
                     ORDER BY fingerprint{c}, receiver{c}"
                ),
                p![],
                notify_state,
            )?)
        })
    }

    /// Records that notification `id` to `receiver` is about to be
    /// attempted for the first time, carrying `items`. A row left by an
    /// earlier episode of an alert is started afresh. Written before the
    /// first request, so a crash mid-send retries with the same id.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn begin_notification(
        &self,
        now: DateTime<Utc>,
        receiver: &str,
        id: &str,
        items: &[NotifyItem],
    ) -> Result<(), StoreError> {
        self.write_db("recording an alert notification", |tx| {
            // The row's own columns are named with the table: PostgreSQL
            // finds a bare name in DO UPDATE ambiguous (it is in
            // `excluded` too).
            for item in items {
                tx.execute(
                    "INSERT INTO alert_notifications (fingerprint, receiver, started_at, \
                     pending_id, pending_kind, pending_since, pending_attempts, pending_next_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?6) \
                     ON CONFLICT (fingerprint, receiver) DO UPDATE SET \
                     last_sent_at = CASE WHEN alert_notifications.started_at = excluded.started_at \
                       THEN alert_notifications.last_sent_at END, \
                     sent_count = CASE WHEN alert_notifications.started_at = excluded.started_at \
                       THEN alert_notifications.sent_count ELSE 0 END, \
                     resolve_sent = CASE WHEN alert_notifications.started_at = excluded.started_at \
                       THEN alert_notifications.resolve_sent ELSE 0 END, \
                     started_at = excluded.started_at, pending_id = excluded.pending_id, \
                     pending_kind = excluded.pending_kind, pending_since = excluded.pending_since, \
                     pending_attempts = 0, pending_next_at = excluded.pending_next_at",
                    p![
                        &item.fingerprint,
                        receiver,
                        millis(item.started_at),
                        id,
                        item.kind.as_str(),
                        millis(now)
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Records a failed attempt of notification `id`: one more attempt,
    /// the next one due at `next_at`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn notification_failed(
        &self,
        receiver: &str,
        id: &str,
        next_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write_db("recording a failed alert notification", |tx| {
            tx.execute(
                "UPDATE alert_notifications SET pending_attempts = pending_attempts + 1, \
                 pending_next_at = ?3 WHERE receiver = ?1 AND pending_id = ?2",
                p![receiver, id, millis(next_at)],
            )?;
            Ok(())
        })
    }

    /// Ends notification `id`: delivered (`delivered`) or given up. A
    /// firing one sets `last_sent_at` (the repeat interval counts from
    /// here either way) and, when delivered, counts as sent; a resolve is
    /// marked sent either way, so a given-up resolve is not tried forever.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn finish_notification(
        &self,
        now: DateTime<Utc>,
        receiver: &str,
        id: &str,
        delivered: bool,
    ) -> Result<(), StoreError> {
        self.write_db("recording a finished alert notification", |tx| {
            // A CASE, not SQLite's `+ (condition)`: PostgreSQL adds no
            // boolean to a number.
            tx.execute(
                "UPDATE alert_notifications SET \
                 last_sent_at = CASE pending_kind WHEN 'firing' THEN CAST(?3 AS BIGINT) \
                   ELSE last_sent_at END, \
                 sent_count = sent_count + \
                   CASE WHEN pending_kind = 'firing' AND ?4 = 1 THEN 1 ELSE 0 END, \
                 resolve_sent = CASE pending_kind WHEN 'resolved' THEN 1 ELSE resolve_sent END, \
                 pending_id = NULL, pending_kind = NULL, pending_since = NULL, \
                 pending_attempts = 0, pending_next_at = NULL \
                 WHERE receiver = ?1 AND pending_id = ?2",
                p![receiver, id, millis(now), delivered],
            )?;
            Ok(())
        })
    }

    /// Forgets notification state of alerts resolved before `before` and
    /// of alerts that no longer exist, except what is still in flight, and
    /// every row of a receiver not in `receivers` (removed from the
    /// config). Returns how many rows went.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn prune_notifications(
        &self,
        before: DateTime<Utc>,
        receivers: &[String],
    ) -> Result<usize, StoreError> {
        self.write_db("pruning alert notification state", |tx| {
            // The receivers that have state are compared with the
            // configured ones here, not in SQL through SQLite's
            // `json_each` (PostgreSQL has no such function): they are a
            // handful, and each removed one costs one DELETE.
            let stored = tx.query_map(
                "SELECT DISTINCT receiver FROM alert_notifications",
                p![],
                |r| r.get_text(0),
            )?;
            let mut gone = 0;
            for receiver in stored.iter().filter(|r| !receivers.contains(r)) {
                gone += tx.execute(
                    "DELETE FROM alert_notifications WHERE receiver = ?1",
                    p![receiver],
                )?;
            }
            let old = tx.execute(
                "DELETE FROM alert_notifications WHERE pending_id IS NULL AND NOT EXISTS \
                 (SELECT 1 FROM alerts a WHERE a.fingerprint = alert_notifications.fingerprint \
                  AND (a.resolved_at IS NULL OR a.resolved_at >= ?1))",
                p![millis(before)],
            )?;
            Ok(usize::try_from(gone + old).unwrap_or(usize::MAX))
        })
    }

    /// What `receiver` pushed in `month` (`YYYY-MM`): messages sent, and
    /// whether LINE's monthly limit stopped it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn receiver_month(&self, receiver: &str, month: &str) -> Result<(u32, bool), StoreError> {
        self.read_db("reading a receiver's monthly messages", |db| {
            let found = db.query_opt(
                "SELECT messages, stopped FROM alert_receiver_months \
                 WHERE receiver = ?1 AND month = ?2",
                p![receiver, month],
                |r| {
                    Ok((
                        count(r, 0, "alert_receiver_months.messages")?,
                        r.get_int(1)? != 0,
                    ))
                },
            )?;
            Ok(found.unwrap_or((0, false)))
        })
    }

    /// Counts `messages` more pushed by `receiver` in `month`, and stops
    /// it for the month when `stop` (LINE's monthly limit answered).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn record_receiver_month(
        &self,
        receiver: &str,
        month: &str,
        messages: u32,
        stop: bool,
    ) -> Result<(), StoreError> {
        self.write_db("counting a receiver's monthly messages", |tx| {
            // No `max(a, b)`: PostgreSQL's max is only an aggregate (its
            // two-value form is `greatest`, which SQLite lacks); a flag
            // once set stays set. The row's columns are named with the
            // table (a bare name is ambiguous to PostgreSQL here).
            tx.execute(
                "INSERT INTO alert_receiver_months (receiver, month, messages, stopped) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (receiver, month) DO UPDATE SET \
                 messages = alert_receiver_months.messages + excluded.messages, \
                 stopped = CASE WHEN excluded.stopped = 1 THEN 1 \
                   ELSE alert_receiver_months.stopped END",
                p![receiver, month, messages, stop],
            )?;
            Ok(())
        })
    }

    /// `text` with any stored token value withheld and long text cut, as
    /// every free-text column is stored: for strings about to leave the
    /// process (a notification's fields).
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`]: only a writer holds the stored values to
    /// screen against (a reader never filled its set, and would pass
    /// everything).
    pub fn screen_text(&self, text: &str) -> Result<String, StoreError> {
        self.screening()?;
        Ok(super::screen_in(&self.inner.screen, text))
    }

    /// True when `text` contains any stored token value: the last check on
    /// a rendered notification before it is sent.
    ///
    /// # Errors
    ///
    /// [`StoreError::ReadOnly`], as [`Store::screen_text`].
    pub fn holds_token(&self, text: &str) -> Result<bool, StoreError> {
        self.screening()?;
        Ok(self.inner.screen.holds(text))
    }

    /// Refuses a reader's screening: its set was never filled.
    fn screening(&self) -> Result<(), StoreError> {
        if self.is_read_only() {
            return Err(StoreError::ReadOnly {
                path: self.inner.path.clone(),
            });
        }
        Ok(())
    }

    /// A receiver of alert changes: its value moves whenever
    /// [`Store::sync_alerts`] raised or resolved something, so the
    /// notifier wakes on changes instead of polling.
    pub fn subscribe_alerts(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.alerts_changed.subscribe()
    }

    /// Tells the subscribers of [`Store::subscribe_alerts`] that alerts
    /// changed.
    pub(super) fn alerts_changed(&self) {
        self.inner
            .alerts_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Decodes a row of [`Store::notification_states`]'s query (by index).
fn notify_state(row: &dyn SqlRow) -> Result<NotifyState, SqlError> {
    let pending = match row.text(6)? {
        None => None,
        Some(id) => Some(PendingNotification {
            id,
            kind: NotifyKind::parse(&row.get_text(7)?)?,
            since: row.time(8, "pending_since")?,
            attempts: count(row, 9, "alert_notifications.pending_attempts")?,
            next_at: row.time(10, "pending_next_at")?,
        }),
    };
    Ok(NotifyState {
        fingerprint: row.get_text(0)?,
        receiver: row.get_text(1)?,
        started_at: row.time(2, "started_at")?,
        last_sent_at: row.opt_time(3, "last_sent_at")?,
        sent_count: count(row, 4, "alert_notifications.sent_count")?,
        resolve_sent: row.get_int(5)? != 0,
        pending,
    })
}

/// Column `i`, named `col` in errors, as a count that fits a `u32`.
fn count(row: &dyn SqlRow, i: usize, col: &str) -> Result<u32, SqlError> {
    let n = row.get_int(i)?;
    u32::try_from(n).map_err(|_| SqlError::Column(format!("{col} holds {n}")))
}
