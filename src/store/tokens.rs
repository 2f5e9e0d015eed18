//! Tokens linetokd issued: their values, times and states.
//!
//! Tokens enter only through [`Store::complete_issue`] (with their intent).
//! A token's state moves once, from live to revoked, expired or gone, and
//! then stays: LINE never brings a dead token back, and the first cause
//! recorded is the one worth keeping.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, Dialect, Param, SqlError, SqlRow, p};
use super::values::{Row as ValueRow, Values};
use super::{EventKind, Fail, IntentId, Scope, Store, StoreError, millis, screen};
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

/// The columns every token query selects, in this order: [`TokenRow::decode`]
/// reads them by position (a lookup by name scans the statement's column
/// names for every value), and a test holds the two together.
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
        self.read_db("reading a token", |db| {
            load_token(db, &self.inner.values, key_id)
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
        self.read_db("listing a group's tokens", |db| {
            query_tokens(
                db,
                &self.inner.values,
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE channel_id = ?1 AND group_name = ?2 \
                     ORDER BY issued_at, {}",
                    key_order(db)
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
    /// The channels come in the database's text order, which on PostgreSQL
    /// is its collation's: callers group by channel and never rely on the
    /// order between channels, and asking for bytes there would cost the
    /// live-token index its use.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn live_tokens_in(&self, scope: Scope<'_>) -> Result<Vec<StoredToken>, StoreError> {
        let mut tokens = self.read_db("listing live tokens", |db| {
            query_tokens(
                db,
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
        let mut records = self.read_db("listing live tokens", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT key_id, channel_id, group_name, issued_at, expires_at, \
                     last_verified_at, refused_at FROM tokens WHERE {} AND state = 'live' \
                     ORDER BY channel_id",
                    scope.condition("channel_id")
                ),
                p![scope.param()],
                |row| {
                    Ok(LiveRecord {
                        channel_id: ChannelId::new(row.get_text(1)?),
                        group: GroupName::new(row.get_text(2)?),
                        record: TokenRecord {
                            key_id: KeyId::new(row.get_text(0)?),
                            issued_at: row.time(3, "issued_at")?,
                            expires_at: row.time(4, "expires_at")?,
                            state: TokenState::Live,
                            verified_at: row.opt_time(5, "last_verified_at")?,
                            refused_at: row.opt_time(6, "refused_at")?,
                        },
                    })
                },
            )?)
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
        self.write_db("changing a token's state", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            if token.record.state != TokenState::Live || state == TokenState::Live {
                return Ok(false);
            }
            super::notify_changed(tx, &token.channel_id)?;
            change_state(tx, now, &token, state, reason)?;
            Ok(true)
        })
    }

    /// Our v2.1 tokens of `channel` that the key-ID listing at `listed`
    /// counted and whose expiry has passed by `now`: issued by `listed`,
    /// expiring after it (or up to a second before it, which LINE's clock
    /// may not have reached) and by `now`, live or expired, unless the
    /// listing itself left them out (marked expired before their expiry).
    /// While LINE's 30-token refusal holds they may still take room at
    /// LINE ([`crate::policy::ChannelView::expired_since_listing`]); the
    /// snapshot holds live tokens only, so they are counted here.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn expired_since_listing(
        &self,
        channel: &ChannelId,
        listed: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u32, StoreError> {
        self.read_db("counting tokens expired since the last listing", |db| {
            let n = db.query_one(
                "SELECT count(*) FROM tokens WHERE channel_id = ?1 \
                 AND substr(key_id, 1, 3) <> 'sl:' \
                 AND issued_at <= ?2 AND expires_at > ?2 - 1000 AND expires_at <= ?3 \
                 AND (state = 'live' OR (state = 'expired' AND state_changed_at >= expires_at))",
                p![channel.as_str(), millis(listed), millis(now)],
                |row| row.get_int(0),
            )?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
    }

    /// Each group's latest short-lived token found evicted (marked gone:
    /// LINE's verify refused it with time left) at or after `since`, by
    /// channel and group.
    ///
    /// The latest per group is picked here, not by a `GROUP BY`: grouping
    /// in SQL made SQLite walk every token ever stored in group order
    /// rather than read the partial index `tokens_short_lived_gone`, which
    /// holds the evicted ones only.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn evictions_in(
        &self,
        scope: Scope<'_>,
        since: DateTime<Utc>,
    ) -> Result<Vec<(ChannelId, GroupName, DateTime<Utc>)>, StoreError> {
        let rows = self.read_db("reading evicted short-lived tokens", |db| {
            Ok(db.query_map(
                &evictions_sql(scope),
                p![scope.param(), millis(since)],
                |row| {
                    Ok((
                        (
                            ChannelId::new(row.get_text(0)?),
                            GroupName::new(row.get_text(1)?),
                        ),
                        row.time(2, "state_changed_at")?,
                    ))
                },
            )?)
        })?;
        let mut latest: BTreeMap<(ChannelId, GroupName), DateTime<Utc>> = BTreeMap::new();
        for (group, at) in rows {
            let slot = latest.entry(group).or_insert(at);
            *slot = (*slot).max(at);
        }
        Ok(latest
            .into_iter()
            .map(|((channel, group), at)| (channel, group, at))
            .collect())
    }

    /// Records that LINE confirmed the token valid at `now`.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownToken`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn record_verified(&self, now: DateTime<Utc>, key_id: &KeyId) -> Result<(), StoreError> {
        self.write_db("recording a verify", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            tx.execute(
                "UPDATE tokens SET last_verified_at = ?2 WHERE key_id = ?1",
                p![key_id.as_str(), millis(now)],
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
        self.write_db("recording a refused token", |tx| {
            let token = load_token(tx, &self.inner.values, key_id)?.ok_or_else(|| {
                StoreError::UnknownToken {
                    key_id: key_id.clone(),
                }
            })?;
            if token.record.state != TokenState::Live || token.record.refused_at.is_some() {
                return Ok(());
            }
            let why = screen(tx, why)?;
            refuse_in(tx, now, &token.channel_id, &token.group, key_id, &why)
        })
    }

    /// Marks every live token (of every channel) whose expiry is at or
    /// before `now` as expired; returns their key IDs.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn expire_due(&self, now: DateTime<Utc>) -> Result<Vec<KeyId>, StoreError> {
        self.write_db("expiring tokens", |tx| {
            expire_in(tx, &self.inner.values, now, Scope::All)
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
        self.write_db("expiring tokens", |tx| {
            expire_in(tx, &self.inner.values, now, Scope::Channel(channel))
        })
    }
}

/// Expires the due live tokens of one channel (or all) inside the caller's
/// transaction.
pub(super) fn expire_in(
    tx: &dyn Db,
    values: &Values,
    now: DateTime<Utc>,
    scope: Scope<'_>,
) -> Result<Vec<KeyId>, Fail> {
    // The scope's condition is one statement per case: with
    // `(? IS NULL OR channel_id = ?)` the planner could not seek
    // `tokens_live_by_channel` by channel and walked every live token of
    // every channel, once per channel's reconcile (at 100,000 groups, 7 %
    // of the daemon's time in a first start).
    let due = query_tokens(
        tx,
        values,
        &format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE {} AND state = 'live' \
             AND expires_at <= ?2 ORDER BY issued_at, {}",
            scope.condition("channel_id"),
            key_order(tx)
        ),
        p![scope.param(), millis(now)],
    )?;
    let mut expired = Vec::with_capacity(due.len());
    for token in due {
        change_state(tx, now, &token, TokenState::Expired, "past its expiry")?;
        expired.push(token.record.key_id);
    }
    Ok(expired)
}

/// The tie-break of tokens issued in the same millisecond, by key ID in
/// byte order on both backends: SQLite compares text bytewise, and
/// PostgreSQL's database collation might not, so it is asked for "C".
fn key_order(db: &dyn Db) -> &'static str {
    match db.dialect() {
        Dialect::Sqlite => "key_id",
        Dialect::Postgres => "key_id COLLATE \"C\"",
    }
}

/// [`Store::evictions_in`]'s query: `?1` the scope's channel, `?2` since.
pub(super) fn evictions_sql(scope: Scope<'_>) -> String {
    format!(
        "SELECT channel_id, group_name, state_changed_at FROM tokens \
         WHERE {} AND state = 'gone' AND substr(key_id, 1, 3) = 'sl:' \
         AND state_changed_at >= ?2",
        scope.condition("channel_id")
    )
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
    // Opening a value may fail with a store error of its own (a wrong
    // key), which a row decoder cannot return: rows are decoded first,
    // then opened, in the same order.
    db.query_map(sql, params, TokenRow::decode)?
        .into_iter()
        .map(|row| row.open(values))
        .collect()
}

/// A row of [`TOKEN_COLUMNS`] with its value as stored.
struct TokenRow {
    channel_id: ChannelId,
    group: GroupName,
    record: TokenRecord,
    plain: Option<String>,
    sealed: Option<Vec<u8>>,
    state_reason: Option<String>,
    state_changed_at: DateTime<Utc>,
    intent: Option<IntentId>,
}

impl TokenRow {
    /// Decodes a row of [`TOKEN_COLUMNS`], by position.
    fn decode(row: &dyn SqlRow) -> Result<Self, SqlError> {
        let state = row.get_text(6)?;
        Ok(Self {
            channel_id: ChannelId::new(row.get_text(1)?),
            group: GroupName::new(row.get_text(2)?),
            record: TokenRecord {
                key_id: KeyId::new(row.get_text(0)?),
                issued_at: row.time(4, "issued_at")?,
                expires_at: row.time(5, "expires_at")?,
                state: parse_state(&state).ok_or_else(|| {
                    SqlError::Column(format!("tokens.state holds unknown state {state:?}"))
                })?,
                refused_at: row.opt_time(11, "refused_at")?,
                verified_at: row.opt_time(9, "last_verified_at")?,
            },
            plain: row.text(3)?,
            sealed: row.blob(12)?,
            state_reason: row.text(7)?,
            state_changed_at: row.time(8, "state_changed_at")?,
            intent: row.int(10)?.map(IntentId::from_raw),
        })
    }

    /// The token with its value, opening a sealed one with `values`.
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

/// Sorts each channel's run of `items` (read in channel order) oldest
/// first, ties by key ID. By channel is the live-token index's own order,
/// so the database sorts nothing; sorting each channel's few tokens here is
/// cheaper than the database sorting 100,000 wide rows by issue time.
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

/// Marks the live token `key_id` of `channel`'s `group` refused at `now`,
/// with a `refused` event carrying `why` (already screened), inside the
/// caller's transaction: [`Store::mark_refused`] and an incident's
/// condemnation (`requests::condemn_survivors`).
pub(super) fn refuse_in(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    group: &GroupName,
    key_id: &KeyId,
    why: &str,
) -> Result<(), Fail> {
    tx.execute(
        "UPDATE tokens SET refused_at = ?2 WHERE key_id = ?1",
        p![key_id.as_str(), millis(now)],
    )?;
    insert_event(
        tx,
        now,
        channel,
        Some(group),
        Some(key_id),
        EventKind::Refused,
        why,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::sql::p;
    use super::super::{Store, StoreOptions, pg};
    use super::*;

    /// A fresh store on SQLite and, when the test cluster runs, on
    /// PostgreSQL (else one skip line, or a failure under
    /// `LINETOKD_REQUIRE_POSTGRES=1`), each with what keeps it alive.
    fn backends(test: &str) -> Vec<(&'static str, Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("linetokd.db")).unwrap();
        let mut out = vec![("sqlite", store, Some(dir))];
        if let Some(db) = pg::cluster::test_db_blocking(test) {
            let target = pg::PgTarget::parse(&db.url()).unwrap();
            let store = Store::open_postgres(
                &target,
                &pg::PoolOptions::default(),
                StoreOptions::default(),
            )
            .unwrap();
            out.push(("postgres", store, None));
        }
        out
    }

    fn at(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).unwrap()
    }

    /// Every column of [`TOKEN_COLUMNS`] comes back in its field, set and
    /// NULL, on both backends: the decoder reads by position, and
    /// PostgreSQL's types (BIGINT, BYTEA) must read as SQLite's do.
    #[test]
    fn a_token_row_decodes_every_column_by_position_on_both_backends() {
        for (name, store, _dir) in backends("token_row_decodes") {
            let intent = store
                .write_db("test set-up", |db| {
                    db.batch(
                        "INSERT INTO channels (id, name, added_at) VALUES ('1000', 'shop', 1); \
                         INSERT INTO groups (channel_id, name, added_at) \
                         VALUES ('1000', 'backend', 1);",
                    )?;
                    let intent = db.query_one(
                        "INSERT INTO issue_intents (channel_id, group_name, started_at, \
                         finished_at, outcome, key_id) \
                         VALUES ('1000', 'backend', 10, 11, 'issued', 'full') RETURNING id",
                        p![],
                        |r| r.get_int(0),
                    )?;
                    db.execute(
                        "INSERT INTO tokens (key_id, channel_id, group_name, access_token, \
                         issued_at, expires_at, state, state_reason, state_changed_at, \
                         last_verified_at, intent_id, refused_at) VALUES \
                         ('full', '1000', 'backend', 'value-full', 12, 13, 'gone', 'why', 14, \
                          15, ?1, 16), \
                         ('bare', '1000', 'backend', 'value-bare', 20, 21, 'live', NULL, 22, \
                          NULL, NULL, NULL)",
                        p![intent],
                    )?;
                    Ok(intent)
                })
                .unwrap();
            let full = store.token(&KeyId::new("full")).unwrap().unwrap();
            assert_eq!(
                full,
                StoredToken {
                    channel_id: ChannelId::new("1000"),
                    group: GroupName::new("backend"),
                    record: TokenRecord {
                        key_id: KeyId::new("full"),
                        issued_at: at(12),
                        expires_at: at(13),
                        state: TokenState::Gone,
                        verified_at: Some(at(15)),
                        refused_at: Some(at(16)),
                    },
                    value: AccessToken::new("value-full"),
                    state_reason: Some("why".to_owned()),
                    state_changed_at: at(14),
                    intent: Some(IntentId::from_raw(intent)),
                },
                "{name}"
            );
            let bare = store.token(&KeyId::new("bare")).unwrap().unwrap();
            assert_eq!(
                (
                    bare.record.state,
                    bare.record.verified_at,
                    bare.record.refused_at,
                    bare.state_reason,
                    bare.intent,
                    bare.state_changed_at
                ),
                (TokenState::Live, None, None, None, None, at(22)),
                "{name}"
            );
            assert_eq!(bare.value.expose(), "value-bare");
            let live = store.live_records_in(Scope::All).unwrap();
            assert_eq!(live.len(), 1, "{name}");
            assert_eq!(live[0].record, bare.record, "{name}");
        }
    }

    /// [`super::TokenRow::decode`] reads by position; this is the order it
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
