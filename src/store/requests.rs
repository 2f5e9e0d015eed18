//! Operator requests: `linetokd rotate` and `linetokd revoke` (an incident),
//! kept as rows until the engine carries them out.
//!
//! A request accepted by the daemon is in the store before the operator is
//! told so; the issue that carries it out closes it in the same transaction
//! that stores the new token ([`Store::complete_issue`]). So a `revoke`
//! followed by kill -9 is carried out after the restart, and `status` and
//! `plan` show what is pending. Either request is also the operator saying
//! "try now": accepting it ends the channel's failure streaks and holds
//! (design 4.7).

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, SqlError, p};
use super::sync::{end_streaks, load_group};
use super::{EventKind, Fail, Scope, Store, StoreError, millis};
use crate::domain::{ChannelId, GroupName, KeyId, OpenRequest, RequestKind, RequestOutcome};

impl Store {
    /// Records a request for each of `groups` of `channel`, with who asked,
    /// in one transaction. Either kind also ends the channel's failure
    /// streaks and holds (the operator says "try now"). Returns the new
    /// request IDs in the order of `groups`.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownGroup`] (also for a removed group),
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn add_requests(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        groups: &[GroupName],
        kind: RequestKind,
        by: &str,
    ) -> Result<Vec<i64>, StoreError> {
        self.write_db("recording an operator request", |tx| {
            let mut ids = Vec::with_capacity(groups.len());
            for group in groups {
                let active = load_group(tx, channel, group)?.is_some_and(|g| g.is_active());
                if !active {
                    return Err(StoreError::UnknownGroup {
                        channel: channel.clone(),
                        group: group.clone(),
                    }
                    .into());
                }
                ids.push(tx.query_one(
                    "INSERT INTO requests (channel_id, group_name, kind, requested_at, requested_by) \
                     VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                    p![channel.as_str(), group.as_str(), kind.as_str(), millis(now), by],
                    |row| row.get_int(0),
                )?);
                insert_event(
                    tx,
                    now,
                    channel,
                    Some(group),
                    None,
                    EventKind::Requested,
                    &format!("{kind} requested by {by}"),
                )?;
            }
            // Both kinds are the operator saying "do it now" (design 4.7):
            // a hold left by a failure the operator has since fixed must
            // not keep the request waiting.
            end_streaks(tx, now, channel, &format!("{kind} requested by {by}"))?;
            Ok(ids)
        })
    }

    /// The open requests of every group of a channel, oldest first, as
    /// `(group, request)`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn open_requests(
        &self,
        channel: &ChannelId,
    ) -> Result<Vec<(GroupName, OpenRequest)>, StoreError> {
        Ok(self
            .open_requests_in(Scope::Channel(channel))?
            .into_iter()
            .map(|(_, group, request)| (group, request))
            .collect())
    }

    /// [`Self::open_requests`] of one channel or all, each with its
    /// channel.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn open_requests_in(
        &self,
        scope: Scope<'_>,
    ) -> Result<Vec<(ChannelId, GroupName, OpenRequest)>, StoreError> {
        self.read_db("listing open requests", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT id, channel_id, group_name, kind, requested_at, requested_by \
                     FROM requests WHERE {} AND done_at IS NULL ORDER BY id",
                    scope.condition("channel_id")
                ),
                p![scope.param()],
                |row| {
                    let kind = row.get_text(3)?;
                    Ok((
                        ChannelId::new(row.get_text(1)?),
                        GroupName::new(row.get_text(2)?),
                        OpenRequest {
                            id: row.get_int(0)?,
                            kind: RequestKind::parse(&kind).ok_or_else(|| {
                                SqlError::Column(format!("requests.kind holds {kind:?}"))
                            })?,
                            at: row.time(4, "requests.requested_at")?,
                            by: row.get_text(5)?,
                        },
                    ))
                },
            )?)
        })
    }

    /// True while request `id` is open.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn request_is_open(&self, id: i64) -> Result<bool, StoreError> {
        self.read_db("reading a request", |db| {
            Ok(db.query_one(
                "SELECT count(*) FROM requests WHERE id = ?1 AND done_at IS NULL",
                p![id],
                |row| row.get_int(0),
            )? > 0)
        })
    }

    /// Where request `id` stands: open, carried out by an issue, or dropped;
    /// `None` when there is no such request.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn request_outcome(&self, id: i64) -> Result<Option<RequestOutcome>, StoreError> {
        self.read_db("reading a request", |db| {
            Ok(db.query_opt(
                "SELECT outcome FROM requests WHERE id = ?1",
                p![id],
                |row| match row.text(0)?.as_deref() {
                    None => Ok(RequestOutcome::Open),
                    Some("done") => Ok(RequestOutcome::Done),
                    Some("dropped") => Ok(RequestOutcome::Dropped),
                    Some(other) => Err(SqlError::Column(format!(
                        "requests.outcome holds {other:?}"
                    ))),
                },
            )?)
        })
    }

    /// Closes requests of `channel` (carried out without an issue, e.g. an
    /// incident on a removed group whose tokens are all revoked, or
    /// `dropped` because their group left the config).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn close_requests(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        ids: &[i64],
        outcome: &str,
    ) -> Result<(), StoreError> {
        self.write_db("closing operator requests", |tx| {
            close_in(tx, now, channel, ids, outcome)
        })
    }
}

/// What marks a token an incident could not revoke: the words of its
/// `refused` event.
pub const CONDEMNED: &str = "leaked: the incident that condemned it could not revoke it (LINE \
     refused the channel secret); never handed out again, and revoked once the secret works";

/// Marks refused (condemned) the live tokens of `group` that an incident
/// among `closes` condemned and that are still live, the new token
/// `fresh` aside: LINE refused their revoke. Closed with the incident's
/// fresh token, they would otherwise be the group's previous token,
/// handed out and left to expire; refused, they are never handed out
/// again and are revoked as soon as the secret works (a reload with the
/// fixed secret). (Found by an outside test: a reload with the fixed
/// secret left the leaked token live for the rest of its life.) Returns
/// their key IDs, which the caller takes out of what consumers are handed.
pub(super) fn condemn_survivors(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    group: &GroupName,
    closes: &[i64],
    fresh: &KeyId,
) -> Result<Vec<KeyId>, Fail> {
    let mut condemned = Vec::new();
    for &id in closes {
        let incident_at = tx.query_opt(
            "SELECT requested_at FROM requests WHERE id = ?1 AND channel_id = ?2 \
             AND kind = 'incident' AND done_at IS NULL",
            p![id, channel.as_str()],
            |row| row.get_int(0),
        )?;
        let Some(at) = incident_at else {
            continue;
        };
        let survivors = tx.query_map(
            "SELECT key_id FROM tokens WHERE channel_id = ?1 AND group_name = ?2 \
             AND state = 'live' AND refused_at IS NULL AND issued_at <= ?3 AND key_id <> ?4",
            p![channel.as_str(), group.as_str(), at, fresh.as_str()],
            |row| row.get_text(0),
        )?;
        for key in survivors.into_iter().map(KeyId::new) {
            super::tokens::refuse_in(tx, now, channel, group, &key, CONDEMNED)?;
            condemned.push(key);
        }
    }
    Ok(condemned)
}

/// Closes the open requests `ids` of `channel` inside the caller's
/// transaction. Requests of another channel or already closed are left
/// alone.
pub(super) fn close_in(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    ids: &[i64],
    outcome: &str,
) -> Result<(), Fail> {
    for &id in ids {
        tx.execute(
            "UPDATE requests SET done_at = ?3, outcome = ?4 \
             WHERE id = ?1 AND channel_id = ?2 AND done_at IS NULL",
            p![id, channel.as_str(), millis(now), outcome],
        )?;
    }
    Ok(())
}
