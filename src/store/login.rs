//! LINE Login grants and their refresh journal (schema version 10).
//!
//! A grant is one user's access and refresh token on one login channel,
//! keyed by (channel, subject). Both values are stored only sealed
//! ([`super::crypt`]), each bound by its additional data to
//! (`login_grants`, channel, `access` | `refresh`, subject, key ID): a
//! store without database keys refuses to write or read them
//! ([`StoreError::LoginUnencrypted`]). Every write re-seals both values
//! under the active key, so a refreshed grant moves to a new key by
//! itself.
//!
//! A refresh is journaled as an issuance is: [`Store::open_refresh_intent`]
//! commits before the call to LINE; [`Store::complete_refresh`] stores the
//! new access token, the new refresh token (when LINE sent one) and closes
//! the intent in one transaction, before anything is published. An intent
//! found open at start ([`Store::open_refresh_intents`]) is closed as lost
//! with a `login_lost_refresh` event ([`Store::close_lost_refresh`]).
//!
//! Events and errors name a grant by [`subject_hash`], never by its
//! subject; no token value leaves this file except through
//! [`Store::login_grant_tokens`].

use chrono::{DateTime, Utc};

use super::crypt::Place;
use super::events::insert_event;
use super::sql::{Db, SqlError, SqlRow, p};
use super::{EventKind, Fail, Store, StoreError, millis};
use crate::domain::{AccessToken, ChannelId, RefreshToken, subject_hash};

/// The table sealed values live in (part of the additional data).
const TABLE: &str = "login_grants";

/// Where a grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantState {
    /// Refreshed ahead of expiry; its access token is served.
    Active,
    /// The refresh token is dead (horizon, `invalid_grant`): the user must
    /// log in again; nothing more is sent to LINE for it.
    NeedsLogin,
    /// Revoked by an operator (kept only until deleted).
    Revoked,
}

impl GrantState {
    /// Every state, for metrics.
    pub const ALL: [GrantState; 3] = [Self::Active, Self::NeedsLogin, Self::Revoked];

    /// The stored spelling, also what metrics and `status` show.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsLogin => "needs_login",
            Self::Revoked => "revoked",
        }
    }

    fn parse(text: &str) -> Result<Self, SqlError> {
        Ok(match text {
            "active" => Self::Active,
            "needs_login" => Self::NeedsLogin,
            "revoked" => Self::Revoked,
            other => return Err(SqlError::Column(format!("login grant state {other:?}"))),
        })
    }
}

/// A grant as stored, without its token values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The login channel.
    pub channel: ChannelId,
    /// The user's LINE ID as the importer gave it. Personal data: log
    /// [`GrantRecord::subject_hash`] instead.
    pub subject: String,
    /// When the current access token expires.
    pub access_expires_at: DateTime<Utc>,
    /// The login time, when the importer gave it.
    pub login_at: Option<DateTime<Utc>>,
    /// When the refresh token dies.
    pub horizon_at: DateTime<Utc>,
    /// True when `horizon_at` was estimated (no login time given).
    pub horizon_estimated: bool,
    /// The granted scopes, space-separated.
    pub scope: String,
    /// Active, needs login, revoked.
    pub state: GrantState,
    /// When it was (last) imported.
    pub imported_at: DateTime<Utc>,
    /// When it was last refreshed.
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// Failed refreshes in a row.
    pub consecutive_failures: u32,
    /// No refresh before this (after a failure).
    pub retry_not_before: Option<DateTime<Utc>>,
    /// When the next refresh is due.
    pub next_refresh_at: DateTime<Utc>,
    /// When the "re-login due" notice went out for this horizon.
    pub reauth_due_notified_at: Option<DateTime<Utc>>,
    /// A refresh of this grant was lost in a crash.
    pub lost_refresh: bool,
}

impl GrantRecord {
    /// [`subject_hash`] of the subject: what logs and `status` show.
    pub fn subject_hash(&self) -> String {
        subject_hash(&self.subject)
    }
}

/// A grant's two token values, opened.
#[derive(Debug, Clone)]
pub struct GrantTokens {
    /// The user access token.
    pub access: AccessToken,
    /// The refresh token.
    pub refresh: RefreshToken,
}

/// A grant to store by import.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// The login channel.
    pub channel: ChannelId,
    /// The user's LINE ID.
    pub subject: String,
    /// The access token (verified by the caller).
    pub access: AccessToken,
    /// The refresh token.
    pub refresh: RefreshToken,
    /// When the access token expires.
    pub access_expires_at: DateTime<Utc>,
    /// The login time, if given.
    pub login_at: Option<DateTime<Utc>>,
    /// When the refresh token dies.
    pub horizon_at: DateTime<Utc>,
    /// True when `horizon_at` is an estimate.
    pub horizon_estimated: bool,
    /// The granted scopes.
    pub scope: String,
    /// When the first refresh is due.
    pub next_refresh_at: DateTime<Utc>,
}

/// A refresh's answer, to store.
#[derive(Debug, Clone)]
pub struct RefreshedGrant {
    /// The new access token.
    pub access: AccessToken,
    /// The refresh token LINE sent, when it sent a non-empty one (it may
    /// rotate it); `None` keeps the stored one.
    pub refresh: Option<RefreshToken>,
    /// When the new access token expires.
    pub access_expires_at: DateTime<Utc>,
    /// The granted scopes, when LINE said.
    pub scope: Option<String>,
    /// When the next refresh is due.
    pub next_refresh_at: DateTime<Utc>,
}

/// How a failed refresh leaves its grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshFailure {
    /// A transient failure: retried at `retry_at`.
    Retry {
        /// The next attempt.
        retry_at: DateTime<Utc>,
        /// Why, for the event (never a token value).
        reason: String,
    },
    /// The refresh token is dead: the grant needs a new login.
    NeedsLogin {
        /// Why, for the event.
        reason: String,
    },
    /// The answer was lost after the request left (timeout, broken
    /// connection, unusable success): LINE may have rotated the refresh
    /// token without linetokd getting the new one. Retried at `retry_at`
    /// like [`RefreshFailure::Retry`], and the grant is flagged
    /// `lost_refresh` with a `login_lost_refresh` event, so a later
    /// `invalid_grant` is explained.
    Lost {
        /// The next attempt.
        retry_at: DateTime<Utc>,
        /// Why, for the event (never a token value).
        reason: String,
    },
    /// The channel was refused (`invalid_client`): the grant waits, its
    /// failure not counted against it, until `retry_at`.
    ChannelPaused {
        /// When the channel is tried again.
        retry_at: DateTime<Utc>,
    },
}

/// A refresh intent left open by a previous run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRefreshIntent {
    /// Its ID.
    pub id: i64,
    /// The login channel.
    pub channel: ChannelId,
    /// The grant's subject.
    pub subject: String,
    /// When it was opened.
    pub opened_at: DateTime<Utc>,
}

/// Grants per channel and state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantCount {
    /// The login channel.
    pub channel: ChannelId,
    /// The state.
    pub state: GrantState,
    /// How many.
    pub grants: u64,
}

/// One login channel's grants at an instant, for `linetokd status`: no
/// subject, no token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GrantSummary {
    /// The login channel.
    pub channel: ChannelId,
    /// Grants kept fresh.
    pub active: u64,
    /// Grants whose user must log in again.
    pub needs_login: u64,
    /// Grants ended.
    pub revoked: u64,
    /// Active grants inside the re-login notice window (horizon −
    /// `reauth_notify_before` ≤ now < horizon).
    pub reauth_due: u64,
    /// Active grants whose horizon is an estimate (no login time given).
    pub horizon_estimated: u64,
}

const GRANT_COLUMNS: &str = "channel_id, subject, access_expires_at, login_at, horizon_at, \
     horizon_estimated, scope, state, imported_at, last_refresh_at, consecutive_failures, \
     retry_not_before, next_refresh_at, reauth_due_notified_at, lost_refresh";

/// How many columns [`GRANT_COLUMNS`] names: a query that selects more
/// after them reads those from here on.
const GRANT_COLUMN_COUNT: usize = 15;

/// Decodes a row selected with [`GRANT_COLUMNS`] first (by index, in its
/// order).
fn decode(row: &dyn SqlRow) -> Result<GrantRecord, SqlError> {
    Ok(GrantRecord {
        channel: ChannelId::new(row.get_text(0)?),
        subject: row.get_text(1)?,
        access_expires_at: row.time(2, "access_expires_at")?,
        login_at: row.opt_time(3, "login_at")?,
        horizon_at: row.time(4, "horizon_at")?,
        horizon_estimated: row.get_int(5)? != 0,
        scope: row.get_text(6)?,
        state: GrantState::parse(&row.get_text(7)?)?,
        imported_at: row.time(8, "imported_at")?,
        last_refresh_at: row.opt_time(9, "last_refresh_at")?,
        consecutive_failures: u32::try_from(row.get_int(10)?).unwrap_or(u32::MAX),
        retry_not_before: row.opt_time(11, "retry_not_before")?,
        next_refresh_at: row.time(12, "next_refresh_at")?,
        reauth_due_notified_at: row.opt_time(13, "reauth_due_notified_at")?,
        lost_refresh: row.get_int(14)? != 0,
    })
}

/// A grant with its two sealed values, as [`Store::login_grant_tokens`]
/// selects it.
fn decode_sealed(row: &dyn SqlRow) -> Result<(GrantRecord, Vec<u8>, Vec<u8>), SqlError> {
    Ok((
        decode(row)?,
        sealed_at(row, GRANT_COLUMN_COUNT, "access_token_enc")?,
        sealed_at(row, GRANT_COLUMN_COUNT + 1, "refresh_token_enc")?,
    ))
}

/// A sealed value from column `i` (named `col` in errors), never NULL.
fn sealed_at(row: &dyn SqlRow, i: usize, col: &str) -> Result<Vec<u8>, SqlError> {
    row.blob(i)?
        .ok_or_else(|| SqlError::Column(format!("login_grants.{col} is NULL")))
}

/// The additional data's place of one value: `kind` is `access` or
/// `refresh`.
fn place<'a>(channel: &'a str, subject: &'a str, kind: &'a str) -> Place<'a> {
    Place {
        table: TABLE,
        channel,
        group: kind,
        row: subject,
    }
}

/// An event about one grant: the subject only as its hash.
fn grant_event(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    subject: &str,
    kind: EventKind,
    detail: &str,
) -> Result<(), Fail> {
    let hash = subject_hash(subject);
    let text = if detail.is_empty() {
        format!("grant {hash}")
    } else {
        format!("grant {hash}: {detail}")
    };
    insert_event(tx, now, channel, None, None, kind, &text).map(drop)
}

/// Seals one value of a grant (`kind` `access` or `refresh`) under the
/// active key, naming the grant (by its hash) on failure: every write of a
/// grant's values, the store's and re-encryption's ([`super::values`]).
pub(super) fn seal_value(
    values: &super::values::Values,
    tx: &dyn Db,
    channel: &str,
    subject: &str,
    kind: &'static str,
    value: &str,
) -> Result<(Vec<u8>, u32), Fail> {
    values
        .seal_only(tx, &place(channel, subject, kind), value)?
        .map_err(|reason| value_error(channel, subject, kind, "encrypted", reason))
}

/// Opens one value of a grant, naming the grant (by its hash) on failure:
/// every read of a grant's values, the store's and re-encryption's.
pub(super) fn open_value(
    values: &super::values::Values,
    channel: &str,
    subject: &str,
    kind: &'static str,
    sealed: &[u8],
) -> Result<String, Fail> {
    values
        .open_only(&place(channel, subject, kind), sealed)?
        .map_err(|reason| value_error(channel, subject, kind, "decrypted", reason))
}

fn value_error(
    channel: &str,
    subject: &str,
    kind: &'static str,
    action: &'static str,
    reason: super::crypt::CryptError,
) -> Fail {
    Fail::Store(StoreError::LoginValue {
        channel: channel.to_owned(),
        subject: subject_hash(subject),
        kind,
        action,
        reason,
    })
}

/// `sum` of a condition over a group, as a BIGINT on both backends:
/// PostgreSQL has no sum of a boolean, and its sum of a BIGINT is NUMERIC.
macro_rules! count_if {
    ($condition:literal) => {
        concat!(
            "CAST(sum(CASE WHEN ",
            $condition,
            " THEN 1 ELSE 0 END) AS BIGINT)"
        )
    };
}

impl Store {
    fn seal_login(
        &self,
        tx: &dyn Db,
        channel: &str,
        subject: &str,
        kind: &'static str,
        value: &str,
    ) -> Result<(Vec<u8>, u32), Fail> {
        seal_value(&self.inner.values, tx, channel, subject, kind, value)
    }

    fn open_login(
        &self,
        channel: &str,
        subject: &str,
        kind: &'static str,
        sealed: &[u8],
    ) -> Result<String, Fail> {
        open_value(&self.inner.values, channel, subject, kind, sealed)
    }

    /// Stores an imported grant, replacing any grant of the same subject
    /// (its state, failures, notice and lost flag start over; an open
    /// refresh intent of the old grant is closed as `superseded`). Returns
    /// true when a grant was replaced.
    ///
    /// # Errors
    /// [`StoreError::LoginUnencrypted`], [`StoreError::LoginValue`],
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn import_login_grant(&self, now: DateTime<Utc>, g: &NewGrant) -> Result<bool, StoreError> {
        self.replace_login_grant(now, g, false)
            .map(|(replaced, _)| replaced)
    }

    /// [`Self::import_login_grant`], also returning the access token of the
    /// grant it replaced when `take_previous` is set (read in the same
    /// transaction, so it is the token the new grant replaced, for a revoke
    /// after the commit).
    ///
    /// # Errors
    /// As [`Self::import_login_grant`].
    pub fn replace_login_grant(
        &self,
        now: DateTime<Utc>,
        g: &NewGrant,
        take_previous: bool,
    ) -> Result<(bool, Option<AccessToken>), StoreError> {
        self.write_db("importing a login grant", |tx| {
            let channel = g.channel.as_str();
            let previous = if take_previous {
                let sealed = tx.query_opt(
                    "SELECT access_token_enc FROM login_grants \
                     WHERE channel_id = ?1 AND subject = ?2",
                    p![channel, &g.subject],
                    |r| sealed_at(r, 0, "access_token_enc"),
                )?;
                sealed
                    .map(|v| self.open_login(channel, &g.subject, "access", &v))
                    .transpose()?
                    .map(AccessToken::new)
            } else {
                None
            };
            let (access, key) =
                self.seal_login(tx, channel, &g.subject, "access", g.access.expose())?;
            let (refresh, _) =
                self.seal_login(tx, channel, &g.subject, "refresh", g.refresh.expose())?;
            let replaced = tx
                .query_opt(
                    "SELECT 1 FROM login_grants WHERE channel_id = ?1 AND subject = ?2",
                    p![channel, &g.subject],
                    |_| Ok(()),
                )?
                .is_some();
            tx.execute(
                "UPDATE refresh_intents SET closed_at = ?3, outcome = 'superseded' \
                 WHERE channel_id = ?1 AND subject = ?2 AND closed_at IS NULL",
                p![channel, &g.subject, millis(now)],
            )?;
            // An upsert that sets every column, as SQLite's INSERT OR
            // REPLACE (which PostgreSQL lacks) did by writing a new row:
            // the replaced grant's refresh history, failures, notice and
            // lost flag start over.
            tx.execute(
                "INSERT INTO login_grants (channel_id, subject, access_token_enc, \
                 refresh_token_enc, enc_key_id, access_expires_at, login_at, horizon_at, \
                 horizon_estimated, scope, state, imported_at, next_refresh_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'active', ?11, ?12) \
                 ON CONFLICT (channel_id, subject) DO UPDATE SET \
                 access_token_enc = excluded.access_token_enc, \
                 refresh_token_enc = excluded.refresh_token_enc, \
                 enc_key_id = excluded.enc_key_id, \
                 access_expires_at = excluded.access_expires_at, login_at = excluded.login_at, \
                 horizon_at = excluded.horizon_at, horizon_estimated = excluded.horizon_estimated, \
                 scope = excluded.scope, state = excluded.state, \
                 imported_at = excluded.imported_at, last_refresh_at = NULL, \
                 consecutive_failures = 0, retry_not_before = NULL, \
                 next_refresh_at = excluded.next_refresh_at, reauth_due_notified_at = NULL, \
                 lost_refresh = 0",
                p![
                    channel,
                    &g.subject,
                    &access,
                    &refresh,
                    key,
                    millis(g.access_expires_at),
                    g.login_at.map(millis),
                    millis(g.horizon_at),
                    g.horizon_estimated,
                    &g.scope,
                    millis(now),
                    millis(g.next_refresh_at),
                ],
            )?;
            let detail = format!(
                "{}; access token until {}, horizon {}{}",
                if replaced { "replaced" } else { "new" },
                g.access_expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
                g.horizon_at.format("%Y-%m-%dT%H:%M:%SZ"),
                if g.horizon_estimated {
                    " (estimated)"
                } else {
                    ""
                }
            );
            grant_event(
                tx,
                now,
                &g.channel,
                &g.subject,
                EventKind::LoginImported,
                &detail,
            )?;
            Ok((replaced, previous))
        })
    }

    /// Records something that happened to a grant around its import (the
    /// revoke of the access token it replaced) as a `login_imported`
    /// event; `detail` must hold no value.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn note_login_import(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        subject: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.write_db("recording a login import's outcome", |tx| {
            grant_event(tx, now, channel, subject, EventKind::LoginImported, detail)
        })
    }

    /// One grant, without its values.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn login_grant(
        &self,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<Option<GrantRecord>, StoreError> {
        self.read_db("reading a login grant", |db| {
            Ok(db.query_opt(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM login_grants \
                     WHERE channel_id = ?1 AND subject = ?2"
                ),
                p![channel.as_str(), subject],
                decode,
            )?)
        })
    }

    /// One grant with its token values opened.
    ///
    /// # Errors
    /// [`StoreError::LoginUnencrypted`], [`StoreError::LoginValue`],
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn login_grant_tokens(
        &self,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<Option<(GrantRecord, GrantTokens)>, StoreError> {
        self.read_db("reading a login grant's tokens", |db| {
            let found = db.query_opt(
                &format!(
                    "SELECT {GRANT_COLUMNS}, access_token_enc, refresh_token_enc \
                     FROM login_grants WHERE channel_id = ?1 AND subject = ?2"
                ),
                p![channel.as_str(), subject],
                decode_sealed,
            )?;
            let Some((record, access, refresh)) = found else {
                return Ok(None);
            };
            let access = self.open_login(channel.as_str(), subject, "access", &access)?;
            let refresh = self.open_login(channel.as_str(), subject, "refresh", &refresh)?;
            Ok(Some((
                record,
                GrantTokens {
                    access: AccessToken::new(access),
                    refresh: RefreshToken::new(refresh),
                },
            )))
        })
    }

    /// Every grant (without values), by channel and subject (their bytes,
    /// on both backends): `status`, the module's start-up schedule and its
    /// notices.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn login_grants(&self) -> Result<Vec<GrantRecord>, StoreError> {
        self.read_db("listing login grants", |db| {
            let c = db.dialect().bytewise();
            Ok(db.query_map(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM login_grants ORDER BY channel_id{c}, subject{c}"
                ),
                p![],
                decode,
            )?)
        })
    }

    /// Active grants due at `now` (`next_refresh_at <= now`), earliest
    /// first, at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn due_login_grants(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<GrantRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read_db("listing due login grants", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM login_grants WHERE state = 'active' \
                     AND next_refresh_at <= ?1 ORDER BY next_refresh_at \
                     LIMIT CAST(?2 AS BIGINT)"
                ),
                p![millis(now), limit],
                decode,
            )?)
        })
    }

    /// The earliest `next_refresh_at` of an active grant.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn next_login_refresh(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read_db("finding the next login refresh", |db| {
            let ms = db.query_one(
                "SELECT min(next_refresh_at) FROM login_grants WHERE state = 'active'",
                p![],
                |r| r.int(0),
            )?;
            ms.map(|ms| {
                DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| Fail::Corrupt(format!("next_refresh_at holds {ms}")))
            })
            .transpose()
        })
    }

    /// Sets the next refresh of many grants at once (the start-up
    /// schedule, after the timings may have changed).
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn reschedule_login_grants(
        &self,
        next: &[(ChannelId, String, DateTime<Utc>)],
    ) -> Result<(), StoreError> {
        self.write_db("rescheduling login grants", |tx| {
            for (channel, subject, at) in next {
                tx.execute(
                    "UPDATE login_grants SET next_refresh_at = ?3 \
                     WHERE channel_id = ?1 AND subject = ?2",
                    p![channel.as_str(), subject, millis(*at)],
                )?;
            }
            Ok(())
        })
    }

    /// Opens (and commits) a refresh intent before the call to LINE.
    ///
    /// # Errors
    /// [`StoreError::Query`] (also when one is already open for the
    /// grant), [`StoreError::ReadOnly`].
    pub fn open_refresh_intent(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<i64, StoreError> {
        self.write_db("opening a refresh intent", |tx| {
            insert_intent(tx, now, channel.as_str(), subject)
        })
    }

    /// Starts a refresh of an active grant: reads its tokens and opens (and
    /// commits) its intent in one transaction, so the refresh token sent is
    /// the one the intent was opened for. An import or delete after this
    /// closes the intent (`superseded`), and [`Self::complete_refresh`]
    /// then stores nothing: a replaced grant's refresh never lands on the
    /// new grant. `None` when there is no active grant.
    ///
    /// # Errors
    /// [`StoreError::LoginUnencrypted`], [`StoreError::LoginValue`],
    /// [`StoreError::Query`] (also when an intent is already open for the
    /// grant), [`StoreError::ReadOnly`].
    pub fn begin_refresh(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        subject: &str,
    ) -> Result<Option<(i64, GrantTokens)>, StoreError> {
        self.write_db("starting a login refresh", |tx| {
            let c = channel.as_str();
            let sealed = tx.query_opt(
                "SELECT access_token_enc, refresh_token_enc FROM login_grants \
                 WHERE channel_id = ?1 AND subject = ?2 AND state = 'active'",
                p![c, subject],
                |r| {
                    Ok((
                        sealed_at(r, 0, "access_token_enc")?,
                        sealed_at(r, 1, "refresh_token_enc")?,
                    ))
                },
            )?;
            let Some((access, refresh)) = sealed else {
                return Ok(None);
            };
            let tokens = GrantTokens {
                access: AccessToken::new(self.open_login(c, subject, "access", &access)?),
                refresh: RefreshToken::new(self.open_login(c, subject, "refresh", &refresh)?),
            };
            let id = insert_intent(tx, now, c, subject)?;
            Ok(Some((id, tokens)))
        })
    }

    /// Stores a refresh's answer and closes its intent, in one
    /// transaction: the new access token, the new refresh token when LINE
    /// sent one (else the stored one, re-sealed), the next refresh.
    /// Returns false (storing nothing) when the intent was closed meanwhile
    /// (the grant was re-imported or deleted).
    ///
    /// # Errors
    /// [`StoreError::LoginUnencrypted`], [`StoreError::LoginValue`],
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn complete_refresh(
        &self,
        now: DateTime<Utc>,
        intent: i64,
        channel: &ChannelId,
        subject: &str,
        answer: &RefreshedGrant,
    ) -> Result<bool, StoreError> {
        self.write_db("storing a refreshed login grant", |tx| {
            if !close_intent(tx, now, intent, "refreshed")? {
                return Ok(false);
            }
            let c = channel.as_str();
            let refresh = match &answer.refresh {
                Some(r) => r.expose().to_owned(),
                None => {
                    let sealed = tx.query_one(
                        "SELECT refresh_token_enc FROM login_grants \
                         WHERE channel_id = ?1 AND subject = ?2",
                        p![c, subject],
                        |r| sealed_at(r, 0, "refresh_token_enc"),
                    )?;
                    self.open_login(c, subject, "refresh", &sealed)?
                }
            };
            let (access_enc, key) =
                self.seal_login(tx, c, subject, "access", answer.access.expose())?;
            let (refresh_enc, _) = self.seal_login(tx, c, subject, "refresh", &refresh)?;
            // `CAST`: PostgreSQL cannot type a parameter inside coalesce
            // from the column alone when it is NULL.
            tx.execute(
                "UPDATE login_grants SET access_token_enc = ?3, refresh_token_enc = ?4, \
                 enc_key_id = ?5, access_expires_at = ?6, \
                 scope = coalesce(CAST(?7 AS TEXT), scope), \
                 last_refresh_at = ?8, consecutive_failures = 0, retry_not_before = NULL, \
                 next_refresh_at = ?9, lost_refresh = 0 \
                 WHERE channel_id = ?1 AND subject = ?2",
                p![
                    c,
                    subject,
                    &access_enc,
                    &refresh_enc,
                    key,
                    millis(answer.access_expires_at),
                    answer.scope.as_ref(),
                    millis(now),
                    millis(answer.next_refresh_at),
                ],
            )?;
            let detail = format!(
                "access token until {}{}",
                answer.access_expires_at.format("%Y-%m-%dT%H:%M:%SZ"),
                if answer.refresh.is_some() {
                    "; new refresh token stored"
                } else {
                    ""
                }
            );
            grant_event(
                tx,
                now,
                channel,
                subject,
                EventKind::LoginRefreshed,
                &detail,
            )?;
            Ok(true)
        })
    }

    /// Records a failed refresh and closes its intent (when `intent` is
    /// given) in one transaction.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn fail_refresh(
        &self,
        now: DateTime<Utc>,
        intent: Option<i64>,
        channel: &ChannelId,
        subject: &str,
        failure: &RefreshFailure,
    ) -> Result<(), StoreError> {
        self.write_db("recording a failed login refresh", |tx| {
            if let Some(intent) = intent
                && !close_intent(tx, now, intent, "failed")?
            {
                return Ok(());
            }
            let c = channel.as_str();
            match failure {
                RefreshFailure::Retry { retry_at, reason } => {
                    tx.execute(
                        "UPDATE login_grants SET consecutive_failures = consecutive_failures + 1, \
                         retry_not_before = ?3, next_refresh_at = ?3 \
                         WHERE channel_id = ?1 AND subject = ?2",
                        p![c, subject, millis(*retry_at)],
                    )?;
                    let detail = format!(
                        "{reason}; retried at {}",
                        retry_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                    grant_event(
                        tx,
                        now,
                        channel,
                        subject,
                        EventKind::LoginRefreshFailed,
                        &detail,
                    )?;
                }
                RefreshFailure::Lost { retry_at, reason } => {
                    tx.execute(
                        "UPDATE login_grants SET consecutive_failures = consecutive_failures + 1, \
                         retry_not_before = ?3, next_refresh_at = ?3, lost_refresh = 1 \
                         WHERE channel_id = ?1 AND subject = ?2",
                        p![c, subject, millis(*retry_at)],
                    )?;
                    let detail = format!(
                        "the answer to a refresh was lost ({reason}): LINE may have issued a new \
                         refresh token that was never stored; retried at {}",
                        retry_at.format("%Y-%m-%dT%H:%M:%SZ")
                    );
                    grant_event(
                        tx,
                        now,
                        channel,
                        subject,
                        EventKind::LoginLostRefresh,
                        &detail,
                    )?;
                }
                RefreshFailure::NeedsLogin { reason } => {
                    tx.execute(
                        "UPDATE login_grants SET state = 'needs_login', retry_not_before = NULL \
                         WHERE channel_id = ?1 AND subject = ?2",
                        p![c, subject],
                    )?;
                    grant_event(
                        tx,
                        now,
                        channel,
                        subject,
                        EventKind::LoginNeedsLogin,
                        reason,
                    )?;
                }
                RefreshFailure::ChannelPaused { retry_at } => {
                    tx.execute(
                        "UPDATE login_grants SET retry_not_before = ?3, next_refresh_at = ?3 \
                         WHERE channel_id = ?1 AND subject = ?2",
                        p![c, subject, millis(*retry_at)],
                    )?;
                }
            }
            Ok(())
        })
    }

    /// Ends the pause of `channel` that LINE's `invalid_client` began and
    /// that was to last `until`: a reload changed the channel's secret. The
    /// grants moved to the pause's end (the refused ones, and those set
    /// aside while it lasted) were due then, so they are due at `now`. A
    /// second refusal during the pause moved its end, so every grant due
    /// between now and `until` is moved; one that was only scheduled in that
    /// hour is refreshed that much early. Returns how many were moved.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn end_login_pause(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        until: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        self.write_db("ending a login channel's pause", |tx| {
            let moved = tx.execute(
                "UPDATE login_grants SET retry_not_before = NULL, next_refresh_at = ?2 \
                 WHERE channel_id = ?1 AND state = 'active' \
                 AND next_refresh_at > ?2 AND next_refresh_at <= ?3",
                p![channel.as_str(), millis(now), millis(until)],
            )?;
            Ok(usize::try_from(moved).unwrap_or(usize::MAX))
        })
    }

    /// Marks the grants of `channel` whose horizon passed as needing a new
    /// login (a `login_needs_login` event each); returns their subjects.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn expire_login_horizons(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        self.write_db("ending login grants at their horizon", |tx| {
            let ended = tx.query_map(
                "SELECT channel_id, subject FROM login_grants \
                 WHERE state = 'active' AND horizon_at <= ?1",
                p![millis(now)],
                |r| Ok((r.get_text(0)?, r.get_text(1)?)),
            )?;
            for (channel, subject) in &ended {
                tx.execute(
                    "UPDATE login_grants SET state = 'needs_login' \
                     WHERE channel_id = ?1 AND subject = ?2",
                    p![channel, subject],
                )?;
                grant_event(
                    tx,
                    now,
                    &ChannelId::new(channel.clone()),
                    subject,
                    EventKind::LoginNeedsLogin,
                    "the refresh token reached its horizon",
                )?;
            }
            Ok(ended.len())
        })
    }

    /// Records the "re-login due" notice of one grant, once: false when it
    /// was already recorded for this grant's current horizon.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn note_reauth_due(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        subject: &str,
        horizon_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.write_db("recording a re-login notice", |tx| {
            let changed = tx.execute(
                "UPDATE login_grants SET reauth_due_notified_at = ?3 \
                 WHERE channel_id = ?1 AND subject = ?2 AND reauth_due_notified_at IS NULL",
                p![channel.as_str(), subject, millis(now)],
            )?;
            if changed > 0 {
                let detail = format!(
                    "re-login due: the refresh token ends at {}",
                    horizon_at.format("%Y-%m-%dT%H:%M:%SZ")
                );
                grant_event(
                    tx,
                    now,
                    channel,
                    subject,
                    EventKind::LoginReauthDue,
                    &detail,
                )?;
            }
            Ok(changed > 0)
        })
    }

    /// Records that LINE refused a login channel (an event).
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn note_login_channel_rejected(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        detail: &str,
    ) -> Result<(), StoreError> {
        self.write_db("recording a refused login channel", |tx| {
            insert_event(
                tx,
                now,
                channel,
                None,
                None,
                EventKind::LoginChannelRejected,
                detail,
            )
            .map(drop)
        })
    }

    /// Refresh intents left open by a previous run.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn open_refresh_intents(&self) -> Result<Vec<OpenRefreshIntent>, StoreError> {
        self.read_db("listing open refresh intents", |db| {
            Ok(db.query_map(
                "SELECT id, channel_id, subject, opened_at FROM refresh_intents \
                 WHERE closed_at IS NULL ORDER BY id",
                p![],
                |r| {
                    Ok(OpenRefreshIntent {
                        id: r.get_int(0)?,
                        channel: ChannelId::new(r.get_text(1)?),
                        subject: r.get_text(2)?,
                        opened_at: r.time(3, "opened_at")?,
                    })
                },
            )?)
        })
    }

    /// Closes an intent a previous run left open as lost, with a
    /// `login_lost_refresh` event, flags its grant and makes it due at
    /// `now`: its next refresh tells whether the stored refresh token
    /// still works.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn close_lost_refresh(
        &self,
        now: DateTime<Utc>,
        intent: &OpenRefreshIntent,
    ) -> Result<(), StoreError> {
        self.write_db("closing a lost refresh intent", |tx| {
            if !close_intent(tx, now, intent.id, "lost")? {
                return Ok(());
            }
            tx.execute(
                "UPDATE login_grants SET lost_refresh = 1, next_refresh_at = ?3 \
                 WHERE channel_id = ?1 AND subject = ?2 AND state = 'active'",
                p![intent.channel.as_str(), &intent.subject, millis(now)],
            )?;
            let detail = format!(
                "a refresh started at {} was in flight when linetokd stopped: LINE may have \
                 issued a new refresh token that was never stored; refreshing again now",
                intent.opened_at.format("%Y-%m-%dT%H:%M:%SZ")
            );
            grant_event(
                tx,
                now,
                &intent.channel,
                &intent.subject,
                EventKind::LoginLostRefresh,
                &detail,
            )
        })
    }

    /// Deletes a grant and closes any open intent. False when there was
    /// none. On SQLite its row is zeroed (an encrypted store runs with
    /// `secure_delete`); PostgreSQL leaves the dead row to VACUUM, and it
    /// held the values only sealed.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn delete_login_grant(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        subject: &str,
        detail: &str,
    ) -> Result<bool, StoreError> {
        self.write_db("deleting a login grant", |tx| {
            tx.execute(
                "UPDATE refresh_intents SET closed_at = ?3, outcome = 'superseded' \
                 WHERE channel_id = ?1 AND subject = ?2 AND closed_at IS NULL",
                p![channel.as_str(), subject, millis(now)],
            )?;
            let deleted = tx.execute(
                "DELETE FROM login_grants WHERE channel_id = ?1 AND subject = ?2",
                p![channel.as_str(), subject],
            )?;
            if deleted > 0 {
                grant_event(tx, now, channel, subject, EventKind::LoginDeleted, detail)?;
            }
            Ok(deleted > 0)
        })
    }

    /// Every login channel's [`GrantSummary`] at `now`, the notice window
    /// being `reauth_notify_before` long; by channel ID (its bytes, on
    /// both backends).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub fn login_grant_summary(
        &self,
        now: DateTime<Utc>,
        reauth_notify_before: std::time::Duration,
    ) -> Result<Vec<GrantSummary>, StoreError> {
        let window = i64::try_from(reauth_notify_before.as_millis()).unwrap_or(i64::MAX);
        self.read_db("summarising login grants", |db| {
            Ok(db.query_map(
                &format!(
                    concat!(
                        "SELECT channel_id, ",
                        count_if!("state = 'active'"),
                        ", ",
                        count_if!("state = 'needs_login'"),
                        ", ",
                        count_if!("state = 'revoked'"),
                        ", ",
                        count_if!("state = 'active' AND horizon_at - ?2 <= ?1 AND ?1 < horizon_at"),
                        ", ",
                        count_if!("state = 'active' AND horizon_estimated != 0"),
                        " FROM login_grants GROUP BY channel_id ORDER BY channel_id{}"
                    ),
                    db.dialect().bytewise()
                ),
                p![millis(now), window],
                |r| {
                    let count = |i| -> Result<u64, SqlError> {
                        Ok(u64::try_from(r.get_int(i)?).unwrap_or(0))
                    };
                    Ok(GrantSummary {
                        channel: ChannelId::new(r.get_text(0)?),
                        active: count(1)?,
                        needs_login: count(2)?,
                        revoked: count(3)?,
                        reauth_due: count(4)?,
                        horizon_estimated: count(5)?,
                    })
                },
            )?)
        })
    }

    /// Grants per channel and state (by their bytes, on both backends).
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn login_grant_counts(&self) -> Result<Vec<GrantCount>, StoreError> {
        self.read_db("counting login grants", |db| {
            let c = db.dialect().bytewise();
            Ok(db.query_map(
                &format!(
                    "SELECT channel_id, state, count(*) FROM login_grants \
                     GROUP BY channel_id, state ORDER BY channel_id{c}, state{c}"
                ),
                p![],
                |r| {
                    Ok(GrantCount {
                        channel: ChannelId::new(r.get_text(0)?),
                        state: GrantState::parse(&r.get_text(1)?)?,
                        grants: u64::try_from(r.get_int(2)?).unwrap_or(0),
                    })
                },
            )?)
        })
    }
}

/// Opens a refresh intent; returns its ID (`RETURNING`, on both backends).
fn insert_intent(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &str,
    subject: &str,
) -> Result<i64, Fail> {
    Ok(tx.query_one(
        "INSERT INTO refresh_intents (channel_id, subject, opened_at) VALUES (?1, ?2, ?3) \
         RETURNING id",
        p![channel, subject, millis(now)],
        |r| r.get_int(0),
    )?)
}

/// Closes an open intent; false when it was already closed (superseded).
fn close_intent(tx: &dyn Db, now: DateTime<Utc>, intent: i64, outcome: &str) -> Result<bool, Fail> {
    let closed = tx.execute(
        "UPDATE refresh_intents SET closed_at = ?2, outcome = ?3 WHERE id = ?1 AND closed_at IS NULL",
        p![intent, millis(now), outcome],
    )?;
    Ok(closed > 0)
}
