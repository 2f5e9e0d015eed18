//! The event history: what happened to which channel, group and token.
//!
//! Events name tokens by key ID only. Their free-text `detail` is screened
//! against every stored token value before it is written, so even a caller
//! that passes a LINE response body containing a token cannot put the value
//! here (docs/design.md invariant 5).

use std::fmt;

use chrono::{DateTime, Utc};

use super::sql::{Db, Dialect, Param, SqlError, SqlRow, p};
use super::{Fail, Store, StoreError, millis, screen};
use crate::domain::{ChannelId, GroupName, KeyId};

/// What happened.
///
/// A new kind needs a new migration (see `migrations/0003_add_hook_events.sql`)
/// even though `events.kind` is free text: the version bump makes an older
/// linetokd refuse the database instead of failing on a kind it cannot parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A token was issued and stored.
    Issued,
    /// An issuance failed (LINE refused or did not answer).
    IssueFailed,
    /// An issuance was in flight when a previous run stopped: LINE may have
    /// issued a token that was never stored.
    IntentLost,
    /// LINE confirmed a token is valid.
    Verified,
    /// Verifying a token failed.
    VerifyFailed,
    /// linetokd revoked a token.
    Revoked,
    /// Revoking a token failed.
    RevokeFailed,
    /// A token passed its expiry.
    Expired,
    /// A token of ours is no longer valid at LINE without our doing.
    Gone,
    /// LINE lists a key ID on the channel that is not ours.
    ForeignSeen,
    /// A foreign key ID is no longer listed.
    ForeignGone,
    /// Listing the channel's valid key IDs failed.
    ReconcileFailed,
    /// A channel appeared in (or came back to) the config.
    ChannelAdded,
    /// A channel left the config.
    ChannelRemoved,
    /// A group appeared in (or came back to) the config.
    GroupAdded,
    /// A group left the config.
    GroupRemoved,
    /// A group's `on_rotate` hook ran to success for a new token (schema
    /// version 3).
    HookSucceeded,
    /// A group's `on_rotate` hook failed for a new token, after its retries
    /// (schema version 3).
    HookFailed,
    /// A channel's key, key ID or secret changed and its failure streaks
    /// were ended (schema version 4).
    ConfigChanged,
    /// An operator request (`rotate`, `revoke`) was accepted (schema
    /// version 4).
    Requested,
    /// LINE's verify refused a token that may still be live at LINE
    /// (schema version 4).
    Refused,
    /// An alert started firing (schema version 4).
    AlertRaised,
    /// An alert stopped firing (schema version 4).
    AlertResolved,
    /// A LINE Login grant was imported (schema version 10).
    LoginImported,
    /// A LINE Login grant was refreshed and stored (schema version 10).
    LoginRefreshed,
    /// Refreshing a LINE Login grant failed; it is retried (schema version 10).
    LoginRefreshFailed,
    /// A grant's refresh was in flight when a previous run stopped: LINE
    /// may have rotated its refresh token unseen (schema version 10).
    LoginLostRefresh,
    /// A grant's refresh token is dead (horizon, `invalid_grant`): the user
    /// must log in again (schema version 10).
    LoginNeedsLogin,
    /// A grant entered its re-login notice window (schema version 10).
    LoginReauthDue,
    /// A grant was revoked and deleted (schema version 10).
    LoginDeleted,
    /// LINE refused a login channel's ID or secret (`invalid_client`): its
    /// refreshes are paused (schema version 10).
    LoginChannelRejected,
}

impl EventKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [EventKind; 31] = [
        Self::Issued,
        Self::IssueFailed,
        Self::IntentLost,
        Self::Verified,
        Self::VerifyFailed,
        Self::Revoked,
        Self::RevokeFailed,
        Self::Expired,
        Self::Gone,
        Self::ForeignSeen,
        Self::ForeignGone,
        Self::ReconcileFailed,
        Self::ChannelAdded,
        Self::ChannelRemoved,
        Self::GroupAdded,
        Self::GroupRemoved,
        Self::HookSucceeded,
        Self::HookFailed,
        Self::ConfigChanged,
        Self::Requested,
        Self::Refused,
        Self::AlertRaised,
        Self::AlertResolved,
        Self::LoginImported,
        Self::LoginRefreshed,
        Self::LoginRefreshFailed,
        Self::LoginLostRefresh,
        Self::LoginNeedsLogin,
        Self::LoginReauthDue,
        Self::LoginDeleted,
        Self::LoginChannelRejected,
    ];

    /// The name stored in the database and shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::IssueFailed => "issue_failed",
            Self::IntentLost => "intent_lost",
            Self::Verified => "verified",
            Self::VerifyFailed => "verify_failed",
            Self::Revoked => "revoked",
            Self::RevokeFailed => "revoke_failed",
            Self::Expired => "expired",
            Self::Gone => "gone",
            Self::ForeignSeen => "foreign_seen",
            Self::ForeignGone => "foreign_gone",
            Self::ReconcileFailed => "reconcile_failed",
            Self::ChannelAdded => "channel_added",
            Self::ChannelRemoved => "channel_removed",
            Self::GroupAdded => "group_added",
            Self::GroupRemoved => "group_removed",
            Self::HookSucceeded => "hook_succeeded",
            Self::HookFailed => "hook_failed",
            Self::ConfigChanged => "config_changed",
            Self::Requested => "requested",
            Self::Refused => "refused",
            Self::AlertRaised => "alert_raised",
            Self::AlertResolved => "alert_resolved",
            Self::LoginImported => "login_imported",
            Self::LoginRefreshed => "login_refreshed",
            Self::LoginRefreshFailed => "login_refresh_failed",
            Self::LoginLostRefresh => "login_lost_refresh",
            Self::LoginNeedsLogin => "login_needs_login",
            Self::LoginReauthDue => "login_reauth_due",
            Self::LoginDeleted => "login_deleted",
            Self::LoginChannelRejected => "login_channel_rejected",
        }
    }

    /// The kind stored as `name`, if this binary knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The channel it concerns.
    pub channel_id: ChannelId,
    /// The group, if it concerns one.
    pub group: Option<GroupName>,
    /// The token, if it concerns one.
    pub key_id: Option<KeyId>,
    /// What happened.
    pub kind: EventKind,
    /// Free text (an error message, a reason). Screened before storage.
    pub detail: String,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its sequence number (increasing).
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The channel it concerns.
    pub channel_id: ChannelId,
    /// The group, if it concerns one.
    pub group: Option<GroupName>,
    /// The token, if it concerns one.
    pub key_id: Option<KeyId>,
    /// What happened.
    pub kind: EventKind,
    /// Free text; never a token value.
    pub detail: String,
}

/// The columns every event query selects, in this order: [`event_from_row`]
/// reads them by position, and a test holds the two together.
const EVENT_COLUMNS: &str = "id, at, channel_id, group_name, key_id, kind, detail";

impl Store {
    /// Records an event at `now` and returns its ID.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn record_event(&self, now: DateTime<Utc>, event: &NewEvent) -> Result<i64, StoreError> {
        self.write_db("recording an event", |tx| {
            insert_event(
                tx,
                now,
                &event.channel_id,
                event.group.as_ref(),
                event.key_id.as_ref(),
                event.kind,
                &event.detail,
            )
        })
    }

    /// The newest `limit` events, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn recent_events(&self, limit: u32) -> Result<Vec<Event>, StoreError> {
        self.read_db("listing events", |db| {
            query_events(
                db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events ORDER BY id DESC LIMIT CAST(?1 AS BIGINT)"
                ),
                p![limit],
            )
        })
    }

    /// The newest `limit` events of one channel, newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn events_of_channel(
        &self,
        channel: &ChannelId,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_db("listing a channel's events", |db| {
            query_events(
                db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE channel_id = ?1 \
                     ORDER BY id DESC LIMIT CAST(?2 AS BIGINT)"
                ),
                p![channel.as_str(), limit],
            )
        })
    }

    /// For every group of every channel, its newest hook result
    /// ([`EventKind::HookSucceeded`] or [`EventKind::HookFailed`]): what
    /// `status` shows for each group's hook, for all groups at once.
    ///
    /// The kinds are written into the SQL (`HOOK_RESULT_KINDS`) rather
    /// than bound, so that SQLite reads the partial index
    /// `events_hook_results` (schema 13), which holds hook results only,
    /// instead of every event ever recorded.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn latest_hook_results(&self) -> Result<Vec<Event>, StoreError> {
        self.read_db("finding each group's latest hook result", |db| {
            query_events(db, &latest_hook_results_sql(), p![])
        })
    }

    /// The newest event of one group whose kind is one of `kinds`, if any:
    /// status uses it for a group's latest hook result
    /// (`[HookSucceeded, HookFailed]`).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn latest_group_event(
        &self,
        channel: &ChannelId,
        group: &GroupName,
        kinds: &[EventKind],
    ) -> Result<Option<Event>, StoreError> {
        let kinds = kinds_json(kinds);
        self.read_db("finding a group's latest event", |db| {
            Ok(query_events(
                db,
                &format!(
                    "SELECT {EVENT_COLUMNS} FROM events \
                     WHERE channel_id = ?1 AND group_name = ?2 \
                       AND kind IN ({}) \
                     ORDER BY id DESC LIMIT 1",
                    kinds_in(db.dialect(), 3)
                ),
                p![channel.as_str(), group.as_str(), kinds.as_str()],
            )?
            .pop())
        })
    }

    /// Deletes events older than `before`; returns how many went. The
    /// history otherwise grows by a few rows per group per day.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn prune_events(&self, before: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write_db("pruning old events", |tx| {
            let gone = tx.execute("DELETE FROM events WHERE at < ?1", p![millis(before)])?;
            // No table holds 2^64 rows; saturate rather than wrap all the same.
            Ok(usize::try_from(gone).unwrap_or(usize::MAX))
        })
    }
}

/// Inserts one event inside the caller's transaction, screening `detail`.
pub(super) fn insert_event(
    db: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    group: Option<&GroupName>,
    key_id: Option<&KeyId>,
    kind: EventKind,
    detail: &str,
) -> Result<i64, Fail> {
    let detail = screen(db, detail)?;
    Ok(db.query_one(
        "INSERT INTO events (at, channel_id, group_name, key_id, kind, detail) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
        p![
            millis(now),
            channel.as_str(),
            group.map(GroupName::as_str),
            key_id.map(KeyId::as_str),
            kind.as_str(),
            detail.as_str(),
        ],
        |r| r.get_int(0),
    )?)
}

/// `kinds` as one JSON array of their names: kinds are few and fixed, so
/// they are matched through one parameter ([`kinds_in`]) rather than a
/// statement built per number of kinds.
fn kinds_json(kinds: &[EventKind]) -> String {
    serde_json::Value::from(kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>()).to_string()
}

/// [`Store::latest_hook_results`]'s query.
pub(super) fn latest_hook_results_sql() -> String {
    format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE id IN ( \
           SELECT max(id) FROM events \
           WHERE kind IN ({HOOK_RESULT_KINDS}) AND group_name IS NOT NULL \
           GROUP BY channel_id, group_name) \
         ORDER BY id"
    )
}

/// The hook result kinds as SQL literals, as the partial index
/// `events_hook_results` (migrations/0013_status_read_indexes.sql) names
/// them: a unit test holds the two to [`EventKind::as_str`].
const HOOK_RESULT_KINDS: &str = "'hook_succeeded', 'hook_failed'";

/// A subquery listing the names in the JSON array bound to parameter `n`
/// ([`kinds_json`]). The dialects unpack JSON arrays differently: SQLite
/// with the table-valued `json_each`, PostgreSQL with the set-returning
/// `json_array_elements_text`.
fn kinds_in(dialect: Dialect, n: u8) -> String {
    match dialect {
        Dialect::Sqlite => format!("SELECT value FROM json_each(?{n})"),
        Dialect::Postgres => {
            format!("SELECT json_array_elements_text(CAST(CAST(?{n} AS TEXT) AS JSON))")
        }
    }
}

fn query_events(db: &dyn Db, sql: &str, params: &[Param<'_>]) -> Result<Vec<Event>, Fail> {
    Ok(db.query_map(sql, params, event_from_row)?)
}

/// Decodes a row of [`EVENT_COLUMNS`], by position.
fn event_from_row(row: &dyn SqlRow) -> Result<Event, SqlError> {
    let kind = row.get_text(5)?;
    Ok(Event {
        id: row.get_int(0)?,
        at: row.time(1, "events.at")?,
        channel_id: ChannelId::new(row.get_text(2)?),
        group: row.text(3)?.map(GroupName::new),
        key_id: row.text(4)?.map(KeyId::new),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| SqlError::Column(format!("events.kind holds unknown kind {kind:?}")))?,
        detail: row.get_text(6)?,
    })
}

#[cfg(test)]
mod tests {
    /// [`super::event_from_row`] reads by position; this is the order it
    /// reads in. Reorder both or neither.
    #[test]
    fn event_columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::EVENT_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "id",
                "at",
                "channel_id",
                "group_name",
                "key_id",
                "kind",
                "detail"
            ]
        );
    }

    /// The hook result read names the kinds the partial index
    /// `events_hook_results` covers, as the store writes them: a kind
    /// renamed in one place only would make every hook look like it never
    /// ran, or make SQLite scan every event again.
    #[test]
    fn hook_result_kinds_are_the_stored_names_the_index_covers() {
        use super::{EventKind, HOOK_RESULT_KINDS};
        let names =
            [EventKind::HookSucceeded, EventKind::HookFailed].map(|k| format!("'{}'", k.as_str()));
        assert_eq!(HOOK_RESULT_KINDS, names.join(", "));
        for migration in [
            include_str!("../../migrations/0013_status_read_indexes.sql"),
            include_str!("../../migrations/postgres/0013_status_read_indexes.sql"),
        ] {
            assert!(
                migration.contains(&format!("WHERE kind IN ({HOOK_RESULT_KINDS})")),
                "{migration}"
            );
        }
    }
}
