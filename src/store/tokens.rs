//! Tokens linetokd issued: their values, times and states.
//!
//! Tokens enter only through [`Store::complete_issue`] (with their intent).
//! A token's state moves once, from live to revoked, expired or gone, and
//! then stays: LINE never brings a dead token back, and the first cause
//! recorded is the one worth keeping.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::events::insert_event;
use super::sql::{Db, Param, SqlError, SqlRow, p};
use super::values::{Row as ValueRow, Values};
use super::{
    EventKind, ExecCached as _, Fail, IntentId, Scope, Store, StoreError, millis,
    opt_time_at_index, screen, time_at, time_at_index,
};
use crate::domain::{AccessToken, ChannelId, GroupName, KeyId, TokenRecord, TokenState};

/// A stored token with its value. `Debug` shows the value's fingerprint
/// only ([`AccessToken`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Its channel.
    pub channel_id: ChannelId,
    /// The group it was issued for.
    pub group: GroupName,
    /// Key ID, times and state.
    pub record: TokenRecord,
    /// The token itself, for the sinks, the token API and revocation.
    pub value: AccessToken,
    /// Why it left the live state (e.g. "revoked: superseded").
    pub state_reason: Option<String>,
    /// When its state last changed (its issue time while live).
    pub state_changed_at: DateTime<Utc>,
    /// The issuance intent that produced it.
    pub intent: Option<IntentId>,
}

/// A live token without its value: what the policy, the driver rounds and
/// `status` read. Reading the value (and, with `[encryption]`, opening
/// its seal) for every token of a channel on every driver round cost more
/// than the rest of the round's reads together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecord {
    /// Its channel.
    pub channel_id: ChannelId,
    /// The group it was issued for.
    pub group: GroupName,
    /// Key ID, times and state.
    pub record: TokenRecord,
}

/// The columns every token query selects, in this order: [`token_from_row`]
/// reads them by position (see [`super::time_at_index`] for why), and a
/// test holds the two together.
pub(super) const TOKEN_COLUMNS: &str = "key_id, channel_id, group_name, access_token, issued_at, \
     expires_at, state, state_reason, state_changed_at, last_verified_at, intent_id, refused_at, \
     access_token_enc";

impl Store {
    /// The token with this key ID.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn token(&self, key_id: &KeyId) -> Result<Option<StoredToken>, StoreError> {
        self.read("reading a token", |conn| {
            load_token(conn, &self.inner.values, key_id)
        })
    }

    /// Every token of a group in every state, oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn tokens_of_group(
        &self,
        channel: &ChannelId,
        group: &GroupName,
    ) -> Result<Vec<StoredToken>, StoreError> {
        self.read("listing a group's tokens", |conn| {
            query_tokens(
                conn,
                &self.inner.values,
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE channel_id = ?1 AND group_name = ?2 \
                     ORDER BY issued_at, key_id"
                ),
                p![channel.as_str(), group.as_str()],
            )
        })
    }

    /// The tokens of a channel (all groups, removed ones included) recorded
    /// live, oldest first. A token past its expiry stays recorded live until
    /// [`Store::expire_due`] or [`Store::reconcile`] runs; use
    /// [`TokenRecord::is_live_at`] to judge.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn live_tokens_of_channel(
        &self,
        channel: &ChannelId,
    ) -> Result<Vec<StoredToken>, StoreError> {
        self.live_tokens_in(Scope::Channel(channel))
    }

    /// [`Self::live_tokens_of_channel`] for one channel or all: one
    /// channel's oldest first; all channels' by channel, each oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn live_tokens_in(&self, scope: Scope<'_>) -> Result<Vec<StoredToken>, StoreError> {
        let mut tokens = self.read("listing live tokens", |conn| {
            query_tokens(
                conn,
                &self.inner.values,
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {} AND state = 'live' \
                     ORDER BY channel_id",
                    scope.condition("channel_id")
                ),
                p![scope.param()],
            )
        })?;
        oldest_first_per_channel(&mut tokens, |t| (&t.channel_id, &t.record));
        Ok(tokens)
    }

    /// The live tokens of one channel or all, as [`Self::live_tokens_in`]
    /// orders them, without their values.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn live_records_in(&self, scope: Scope<'_>) -> Result<Vec<LiveRecord>, StoreError> {
        let mut records = self.read("listing live tokens", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT key_id, channel_id, group_name, issued_at, expires_at, \
                 last_verified_at, refused_at FROM tokens WHERE {} AND state = 'live' \
                 ORDER BY channel_id",
                scope.condition("channel_id")
            ))?;
            let mut rows = stmt.query(params![scope.param()])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push(LiveRecord {
                    channel_id: ChannelId::new(row.get::<_, String>(1)?),
                    group: GroupName::new(row.get::<_, String>(2)?),
                    record: TokenRecord {
                        key_id: KeyId::new(row.get::<_, String>(0)?),
                        issued_at: time_at_index(row, 3, "issued_at")?,
                        expires_at: time_at_index(row, 4, "expires_at")?,
                        state: TokenState::Live,
                        verified_at: opt_time_at_index(row, 5, "last_verified_at")?,
                        refused_at: opt_time_at_index(row, 6, "refused_at")?,
                    },
                });
            }
            Ok(out)
        })?;
        oldest_first_per_channel(&mut records, |t| (&t.channel_id, &t.record));
        Ok(records)
    }

    /// Moves a live token to `state` with a reason (screened like every
    /// free text) and records the matching event. Returns false, changing
    /// nothing, when the token is already in `state` or has already left the
    /// live state (the first cause is kept).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownToken`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn set_token_state(
        &self,
        now: DateTime<Utc>,
        key_id: &KeyId,
        state: TokenState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.write("changing a token's state", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            if token.record.state != TokenState::Live || state == TokenState::Live {
                return Ok(false);
            }
            change_state(tx, now, &token, state, reason)?;
            Ok(true)
        })
    }

    /// Each group's latest short-lived token found evicted (marked gone:
    /// LINE's verify refused it with time left) at or after `since`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn evictions_in(
        &self,
        scope: Scope<'_>,
        since: DateTime<Utc>,
    ) -> Result<Vec<(ChannelId, GroupName, DateTime<Utc>)>, StoreError> {
        self.read("reading evicted short-lived tokens", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT channel_id, group_name, MAX(state_changed_at) AS at FROM tokens \
                 WHERE {} AND state = 'gone' AND substr(key_id, 1, 3) = 'sl:' \
                 AND state_changed_at >= ?2 GROUP BY channel_id, group_name",
                scope.condition("channel_id")
            ))?;
            let mut rows = stmt.query(params![scope.param(), millis(since)])?;
            let mut out = Vec::new();
            while let Some(row) = rows.next()? {
                out.push((
                    ChannelId::new(row.get::<_, String>("channel_id")?),
                    GroupName::new(row.get::<_, String>("group_name")?),
                    time_at(row, "at")?,
                ));
            }
            Ok(out)
        })
    }

    /// Records that LINE confirmed the token valid at `now`.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownToken`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn record_verified(&self, now: DateTime<Utc>, key_id: &KeyId) -> Result<(), StoreError> {
        self.write("recording a verify", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            tx.exec_cached(
                "UPDATE tokens SET last_verified_at = ?2 WHERE key_id = ?1",
                params![key_id.as_str(), millis(now)],
            )?;
            insert_event(
                tx,
                now,
                &token.channel_id,
                Some(&token.group),
                Some(key_id),
                EventKind::Verified,
                "",
            )?;
            Ok(())
        })
    }

    /// Records that LINE's verify refused a live token that may still be
    /// live at LINE: it is never handed out again, but stays live (counted
    /// against capacity and the two-per-group bound) until it is revoked,
    /// expires, or a reconcile no longer lists it. A `refused` event carries
    /// `why`. Refusing an already refused or no longer live token does
    /// nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownToken`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn mark_refused(
        &self,
        now: DateTime<Utc>,
        key_id: &KeyId,
        why: &str,
    ) -> Result<(), StoreError> {
        self.write("recording a refused token", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            if token.record.state != TokenState::Live || token.record.refused_at.is_some() {
                return Ok(());
            }
            tx.exec_cached(
                "UPDATE tokens SET refused_at = ?2 WHERE key_id = ?1",
                params![key_id.as_str(), millis(now)],
            )?;
            let why = screen(tx, why)?;
            insert_event(
                tx,
                now,
                &token.channel_id,
                Some(&token.group),
                Some(key_id),
                EventKind::Refused,
                &why,
            )?;
            Ok(())
        })
    }

    /// Marks every live token (of every channel) whose expiry is at or
    /// before `now` as expired; returns their key IDs.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<KeyId>, StoreError> {
        self.write("expiring tokens", |tx| {
            expire_in(tx, &self.inner.values, now, None)
        })
    }

    /// [`Store::expire_due`] for one channel's tokens.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn expire_due_in(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
    ) -> Result<Vec<KeyId>, StoreError> {
        self.write("expiring tokens", |tx| {
            expire_in(tx, &self.inner.values, now, Some(channel))
        })
    }
}

/// Expires the due live tokens of one channel (or all) inside the caller's
/// transaction.
pub(super) fn expire_in(
    tx: &dyn Db,
    values: &Values,
    now: DateTime<Utc>,
    channel: Option<&ChannelId>,
) -> Result<Vec<KeyId>, Fail> {
    // Cast: PostgreSQL cannot infer a parameter's type from IS NULL.
    let due = query_tokens(
        tx,
        values,
        &format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE state = 'live' AND expires_at <= ?1 \
             AND (CAST(?2 AS TEXT) IS NULL OR channel_id = ?2) ORDER BY issued_at, key_id{}",
            tx.dialect().bytewise()
        ),
        p![millis(now), channel.map(ChannelId::as_str)],
    )?;
    let mut expired = Vec::with_capacity(due.len());
    for token in due {
        change_state(tx, now, &token, TokenState::Expired, "past its expiry")?;
        expired.push(token.record.key_id);
    }
    Ok(expired)
}

/// Writes a live token's new state and the matching event.
pub(super) fn change_state(
    tx: &dyn Db,
    now: DateTime<Utc>,
    token: &StoredToken,
    state: TokenState,
    reason: &str,
) -> Result<(), Fail> {
    let reason = screen(tx, reason)?;
    tx.execute(
        "UPDATE tokens SET state = ?2, state_reason = ?3, state_changed_at = ?4 WHERE key_id = ?1",
        p![
            token.record.key_id.as_str(),
            state.as_str(),
            reason.as_str(),
            millis(now)
        ],
    )?;
    let kind = match state {
        TokenState::Revoked => EventKind::Revoked,
        TokenState::Expired => EventKind::Expired,
        // Live never reaches here (callers refuse it); Gone is the rest.
        TokenState::Gone | TokenState::Live => EventKind::Gone,
    };
    insert_event(
        tx,
        now,
        &token.channel_id,
        Some(&token.group),
        Some(&token.record.key_id),
        kind,
        &reason,
    )?;
    Ok(())
}

pub(super) fn load_token(
    db: &dyn Db,
    values: &Values,
    key_id: &KeyId,
) -> Result<Option<StoredToken>, Fail> {
    let mut found = query_tokens(
        db,
        values,
        &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE key_id = ?1"),
        p![key_id.as_str()],
    )?;
    Ok(found.pop())
}

/// The tokens a query of [`TOKEN_COLUMNS`] selects, their values opened
/// with `values`' keyring.
pub(super) fn query_tokens(
    db: &dyn Db,
    values: &Values,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<StoredToken>, Fail> {
    // Rows are decoded first and opened after: a value that does not open
    // is a store error (`Undecryptable`), which a row decoder cannot
    // return. The first that fails stops the rest, as before.
    db.query_map(sql, params, token_from_row)?
        .into_iter()
        .map(|unopened| unopened.open(values))
        .collect()
}

/// A token row as read, its value not yet opened.
struct Unopened {
    channel_id: ChannelId,
    group: GroupName,
    record: TokenRecord,
    state_reason: Option<String>,
    state_changed_at: DateTime<Utc>,
    intent: Option<IntentId>,
    plain: Option<String>,
    sealed: Option<Vec<u8>>,
}

impl Unopened {
    /// The token with its value, opened with `values`' keyring.
    fn open(self, values: &Values) -> Result<StoredToken, Fail> {
        let value = values.open(
            ValueRow {
                key_id: self.record.key_id.as_str(),
                channel: self.channel_id.as_str(),
                group: self.group.as_str(),
            },
            self.plain,
            self.sealed,
        )?;
        Ok(StoredToken {
            channel_id: self.channel_id,
            group: self.group,
            record: self.record,
            value,
            state_reason: self.state_reason,
            state_changed_at: self.state_changed_at,
            intent: self.intent,
        })
    }
}

/// Decodes a row of [`TOKEN_COLUMNS`], by position; its value is opened
/// by [`Unopened::open`].
fn token_from_row(row: &dyn SqlRow) -> Result<Unopened, SqlError> {
    let state = row.get_text(6)?;
    Ok(Unopened {
        channel_id: ChannelId::new(row.get_text(1)?),
        group: GroupName::new(row.get_text(2)?),
        record: TokenRecord {
            key_id: KeyId::new(row.get_text(0)?),
            issued_at: row.time(4, "tokens.issued_at")?,
            expires_at: row.time(5, "tokens.expires_at")?,
            state: parse_state(&state).ok_or_else(|| {
                SqlError::Column(format!("tokens.state holds unknown state {state:?}"))
            })?,
            refused_at: row.opt_time(11, "tokens.refused_at")?,
            verified_at: row.opt_time(9, "tokens.last_verified_at")?,
        },
        state_reason: row.text(7)?,
        state_changed_at: row.time(8, "tokens.state_changed_at")?,
        intent: row.int(10)?.map(IntentId::from_raw),
        plain: row.text(3)?,
        sealed: row.blob(12)?,
    })
}

/// Sorts each channel's run of `items` (read in channel order) oldest
/// first, ties by key ID. By channel is the live-token index's own order,
/// so SQLite sorts nothing; sorting each channel's few tokens here is
/// cheaper than SQLite sorting 100,000 wide rows by issue time.
fn oldest_first_per_channel<T>(items: &mut [T], of: impl Fn(&T) -> (&ChannelId, &TokenRecord)) {
    for channel in items.chunk_by_mut(|a, b| of(a).0 == of(b).0) {
        channel.sort_by(|a, b| {
            let (a, b) = (of(a).1, of(b).1);
            (a.issued_at, &a.key_id).cmp(&(b.issued_at, &b.key_id))
        });
    }
}

fn parse_state(name: &str) -> Option<TokenState> {
    [
        TokenState::Live,
        TokenState::Revoked,
        TokenState::Expired,
        TokenState::Gone,
    ]
    .into_iter()
    .find(|s| s.as_str() == name)
}

#[cfg(test)]
mod tests {
    /// [`super::token_from_row`] reads by position; this is the order it
    /// reads in. Reorder both or neither.
    #[test]
    fn token_columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::TOKEN_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "key_id",
                "channel_id",
                "group_name",
                "access_token",
                "issued_at",
                "expires_at",
                "state",
                "state_reason",
                "state_changed_at",
                "last_verified_at",
                "intent_id",
                "refused_at",
                "access_token_enc"
            ]
        );
    }
}
