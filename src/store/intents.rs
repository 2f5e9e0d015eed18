//! The issuance-intent journal (docs/design.md section 5, "Crash journal").
//!
//! The rotator calls [`Store::begin_issue`] before asking LINE for a token,
//! then [`Store::complete_issue`] (token stored and intent closed in one
//! transaction) or [`Store::fail_issue`]. Only after `complete_issue`
//! returns may the token be published (invariant 6). An intent still open
//! when the daemon starts stands for a token LINE may have issued that was
//! never stored: [`Store::close_lost_intents`] reports and closes those, and
//! the next reconcile shows any such token as foreign, so it is never lost
//! silently.
//!
//! Intents are also the persisted issuance count: [`Store::issue_times_since`]
//! counts every attempt, whatever its outcome, so `max_issues_per_hour`
//! holds across restarts and crash loops (invariant 4).

use std::fmt;

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, Param, SqlError, SqlRow, p};
use super::sync::load_group;
use super::tokens::load_token;
use super::values::Row as ValueRow;
use super::{EventKind, Fail, Scope, Store, StoreError, StoredToken, millis, screen};
use crate::domain::{AccessToken, ChannelId, GroupName, KeyId};

/// The ID of one issuance intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IntentId(i64);

impl IntentId {
    /// The row ID.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The intent with row ID `id`, as a backend stored it (the
    /// PostgreSQL orphan record keeps the intent's ID).
    pub fn from_raw(id: i64) -> Self {
        Self(id)
    }
}

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How an intent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IntentOutcome {
    /// Still in flight (or its process died).
    Open,
    /// The token was stored.
    Issued,
    /// LINE refused or did not answer.
    Failed,
    /// Found open at start: the process stopped mid-issuance.
    Lost,
}

impl IntentOutcome {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Issued => "issued",
            Self::Failed => "failed",
            Self::Lost => "lost",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        [Self::Open, Self::Issued, Self::Failed, Self::Lost]
            .into_iter()
            .find(|o| o.as_str() == name)
    }
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueIntent {
    /// Its ID.
    pub id: IntentId,
    /// The channel.
    pub channel_id: ChannelId,
    /// The group the token was for.
    pub group: GroupName,
    /// When it began (before LINE was asked).
    pub started_at: DateTime<Utc>,
    /// When it was closed.
    pub finished_at: Option<DateTime<Utc>>,
    /// How it ended.
    pub outcome: IntentOutcome,
    /// The issued token's key ID, when [`IntentOutcome::Issued`].
    pub key_id: Option<KeyId>,
    /// Why it failed, when [`IntentOutcome::Failed`] or [`IntentOutcome::Lost`].
    pub error: Option<String>,
}

/// A token LINE just issued, as [`Store::complete_issue`] stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// LINE's `key_id`.
    pub key_id: KeyId,
    /// LINE's `access_token`.
    pub value: AccessToken,
    /// When it was issued (our clock at the response).
    pub issued_at: DateTime<Utc>,
    /// `issued_at + expires_in`.
    pub expires_at: DateTime<Utc>,
    /// When LINE's verify endpoint confirmed it, if it was verified before
    /// being stored.
    pub verified_at: Option<DateTime<Utc>>,
}

/// What [`Store::complete_issue`] did: the token as stored, and the
/// group's tokens it condemned (an incident the issue carried out could
/// not revoke them), which consumers must be handed no more.
#[derive(Debug, Clone)]
pub struct Completed {
    /// The new token, read back.
    pub token: StoredToken,
    /// Key IDs marked refused with it (`super::CONDEMNED`).
    pub condemned: Vec<KeyId>,
}

/// The columns every intent query selects, in the order
/// [`intent_from_row`] reads them.
const INTENT_COLUMNS: &str =
    "id, channel_id, group_name, started_at, finished_at, outcome, key_id, error";

/// The `error` of intents closed by [`Store::close_lost_intents`].
const LOST_REASON: &str = "linetokd stopped while this issuance was in flight; \
                           a token LINE issued for it would show up as foreign";

/// The condition on an intent `i` that makes it a takeover's held attempt
/// ([`Store::held_assertion_exp`]): closed as lost and possibly issued
/// under a lease epoch, with its assertion's expiry, and not an orphan LINE
/// already revoked. The caller adds the channel and the settled watermark.
///
/// The `IN` term repeats what `= 'lost'` says so that SQLite reads the
/// partial index `issue_intents_maybe_issued` (schema 13): it uses one only
/// when the query's WHERE contains the index's terms as written.
const HELD_INTENT: &str = "i.outcome IN ('failed', 'lost') AND i.outcome = 'lost' \
     AND i.maybe_issued = 1 AND i.epoch IS NOT NULL AND i.assertion_exp IS NOT NULL \
     AND NOT EXISTS (SELECT 1 FROM fenced_orphans o WHERE o.intent_id = i.id \
       AND o.revoke_outcome = 'revoked')";

/// [`Store::unsettled_issues_by_channel`]'s query.
pub(super) const UNSETTLED_BY_CHANNEL: &str = "SELECT i.channel_id, i.group_name \
     FROM issue_intents i LEFT JOIN channels c ON c.id = i.channel_id \
     WHERE i.id > coalesce(c.settled_through_intent, 0) \
       AND i.outcome IN ('failed', 'lost') AND i.maybe_issued = 1 \
     ORDER BY i.channel_id, i.id";

/// [`Store::held_assertion_exps_by_channel`]'s query.
pub(super) fn held_by_channel_sql() -> String {
    format!(
        "SELECT i.channel_id, max(i.assertion_exp) FROM issue_intents i \
         LEFT JOIN channels c ON c.id = i.channel_id \
         WHERE i.id > coalesce(c.settled_through_intent, 0) AND {HELD_INTENT} \
         GROUP BY i.channel_id"
    )
}

/// Why a takeover closed the previous leader's issuance (docs/design.md
/// §14.3).
const TAKEN_OVER_REASON: &str = "the previous leader's lease ended while this issuance was in \
     flight; a token LINE issued for it is counted until a key-ID listing after its assertion \
     expired settles it, and reported as lost, not foreign";

/// The same for a short-lived group's issuance, which no listing can settle.
const LOST_SHORT_LIVED_REASON: &str = "linetokd stopped while this short-lived issuance was in \
     flight; a token LINE issued for it cannot be seen or revoked, and lives in the channel's \
     short-lived pool until later issues evict it or it expires";

impl Store {
    /// Journals an issuance for a group before LINE is asked.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownGroup`], [`StoreError::GroupRemoved`],
    /// [`StoreError::IssueInFlight`] when the group already has an open
    /// intent, [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn begin_issue(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        group: &GroupName,
    ) -> Result<IntentId, StoreError> {
        self.begin_issue_with(now, channel, group, None)
    }

    /// [`Store::begin_issue`] recording the expiry of the assertion the
    /// request will carry (signed before, sent after; docs/design.md
    /// §14.3): LINE refuses it from then on, so after that instant no
    /// request of this intent can still issue a token.
    ///
    /// # Errors
    ///
    /// As [`Store::begin_issue`].
    pub fn begin_issue_with(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        group: &GroupName,
        assertion_exp: Option<DateTime<Utc>>,
    ) -> Result<IntentId, StoreError> {
        self.write_db("journaling an issuance", |tx| {
            let row = load_group(tx, channel, group)?.ok_or_else(|| StoreError::UnknownGroup {
                channel: channel.clone(),
                group: group.clone(),
            })?;
            if !row.is_active() {
                return Err(StoreError::GroupRemoved {
                    channel: channel.clone(),
                    group: group.clone(),
                }
                .into());
            }
            let open = query_intents(
                tx,
                &format!(
                    "SELECT {INTENT_COLUMNS} FROM issue_intents \
                     WHERE outcome = 'open' AND channel_id = ?1 AND group_name = ?2"
                ),
                p![channel.as_str(), group.as_str()],
            )?;
            if let Some(intent) = open.first() {
                return Err(StoreError::IssueInFlight {
                    channel: channel.clone(),
                    group: group.clone(),
                    intent: intent.id,
                }
                .into());
            }
            // Under a lease the intent records its epoch: the next leader
            // tells its predecessor's intents from its own by it.
            let epoch = self.fence().map(|f| f.epoch.0);
            let id = tx.query_one(
                "INSERT INTO issue_intents (channel_id, group_name, started_at, epoch, \
                 assertion_exp) VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
                p![
                    channel.as_str(),
                    group.as_str(),
                    millis(now),
                    epoch,
                    assertion_exp.map(millis)
                ],
                |row| row.get_int(0),
            )?;
            Ok(IntentId(id))
        })
    }

    /// Stores the token LINE issued for `intent` and closes the intent, in
    /// one transaction, with an `issued` event. If the key ID had been seen
    /// as foreign (a reconcile ran while LINE was answering), it is ours and
    /// leaves the foreign list. The operator requests `closes` end with it;
    /// the group's tokens an incident among them could not revoke are
    /// condemned in the same transaction, and returned. After this returns
    /// the token is durable and may be published.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownIntent`], [`StoreError::IntentClosed`],
    /// [`StoreError::DuplicateToken`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`]. On error nothing is written.
    pub fn complete_issue(
        &self,
        now: DateTime<Utc>,
        intent: IntentId,
        token: &IssuedToken,
        closes: &[i64],
    ) -> Result<Completed, StoreError> {
        self.write_db("storing an issued token", |tx| {
            let journal = open_intent(tx, intent)?;
            // Delivered at commit: the other instances publish it at once.
            super::notify_changed(tx, &journal.channel_id)?;
            let values = &self.inner.values;
            if load_token(tx, values, &token.key_id)?.is_some() {
                return Err(StoreError::DuplicateToken {
                    key_id: token.key_id.clone(),
                }
                .into());
            }
            // Sealed under the active key when the store has a keyring;
            // the value joins the screening set in this transaction.
            let column = values.column(
                tx,
                ValueRow {
                    key_id: token.key_id.as_str(),
                    channel: journal.channel_id.as_str(),
                    group: journal.group.as_str(),
                },
                &token.value,
            )?;
            super::values::remember(tx, &token.value);
            tx.execute(
                "INSERT INTO tokens (key_id, channel_id, group_name, access_token, issued_at, \
                 expires_at, state, state_changed_at, last_verified_at, intent_id, \
                 access_token_enc, enc_key_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'live', ?7, ?8, ?9, ?10, ?11)",
                p![
                    token.key_id.as_str(),
                    journal.channel_id.as_str(),
                    journal.group.as_str(),
                    column.plain.as_deref(),
                    millis(token.issued_at),
                    millis(token.expires_at),
                    millis(now),
                    token.verified_at.map(millis),
                    intent.0,
                    column.sealed.as_deref(),
                    column.key,
                ],
            )?;
            tx.execute(
                "UPDATE issue_intents SET outcome = 'issued', finished_at = ?2, key_id = ?3 \
                 WHERE id = ?1",
                p![intent.0, millis(now), token.key_id.as_str()],
            )?;
            tx.execute(
                "DELETE FROM foreign_kids WHERE channel_id = ?1 AND key_id = ?2",
                p![journal.channel_id.as_str(), token.key_id.as_str()],
            )?;
            // The operator requests this issue carries out end with it, in
            // the same transaction: a crash never leaves a request done
            // without its token, or a token without its request closed.
            let condemned = super::requests::condemn_survivors(
                tx,
                now,
                &journal.channel_id,
                &journal.group,
                closes,
                &token.key_id,
            )?;
            super::requests::close_in(tx, now, &journal.channel_id, closes, "done")?;
            insert_event(
                tx,
                now,
                &journal.channel_id,
                Some(&journal.group),
                Some(&token.key_id),
                EventKind::Issued,
                &format!("expires at {}", token.expires_at.to_rfc3339()),
            )?;
            let stored = load_token(tx, values, &token.key_id)?.ok_or_else(|| {
                Fail::Corrupt("the token just stored cannot be read back".to_owned())
            })?;
            Ok(Completed {
                token: stored,
                condemned,
            })
        })
    }

    /// Closes `intent` as failed with the error (screened, cut to length)
    /// and an `issue_failed` event. `maybe_issued` says LINE may have issued
    /// a token anyway (a timeout after sending, a 200 that broke the
    /// contract): such an attempt counts against capacity until a reconcile
    /// settles it ([`Store::unsettled_issues`]).
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownIntent`], [`StoreError::IntentClosed`],
    /// [`StoreError::Query`], [`StoreError::ReadOnly`].
    pub fn fail_issue(
        &self,
        now: DateTime<Utc>,
        intent: IntentId,
        error: &str,
        maybe_issued: bool,
    ) -> Result<(), StoreError> {
        self.write_db("journaling a failed issuance", |tx| {
            let journal = open_intent(tx, intent)?;
            let error = screen(tx, error)?;
            tx.execute(
                "UPDATE issue_intents SET outcome = 'failed', finished_at = ?2, error = ?3, \
                 maybe_issued = ?4 WHERE id = ?1",
                p![intent.0, millis(now), error.as_str(), maybe_issued],
            )?;
            insert_event(
                tx,
                now,
                &journal.channel_id,
                Some(&journal.group),
                None,
                EventKind::IssueFailed,
                &error,
            )?;
            Ok(())
        })
    }

    /// One journal entry.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn intent(&self, intent: IntentId) -> Result<Option<IssueIntent>, StoreError> {
        self.read_db("reading an issuance intent", |db| load_intent(db, intent))
    }

    /// Every intent still open, oldest first. At start (before any new
    /// issuance) these are issuances a previous run did not finish.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn open_intents(&self) -> Result<Vec<IssueIntent>, StoreError> {
        self.read_db("listing open issuance intents", |db| {
            query_intents(
                db,
                &format!(
                    "SELECT {INTENT_COLUMNS} FROM issue_intents WHERE outcome = 'open' ORDER BY id"
                ),
                p![],
            )
        })
    }

    /// Closes every open intent as lost, with an `intent_lost` event each,
    /// and returns them (closed). Call once at start, after taking the
    /// writer lock and before the first issuance: at that moment every open
    /// intent belongs to a run that died.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`],
    /// [`StoreError::ReadOnly`].
    pub fn close_lost_intents(&self, now: DateTime<Utc>) -> Result<Vec<IssueIntent>, StoreError> {
        self.close_intents_of_others(now, None)
    }

    /// A new leader's takeover of `fence.channel` (docs/design.md §14.3):
    /// closes the channel's open intents of older epochs (and of a writer
    /// without leases) as lost, possibly issued, as
    /// [`Store::close_lost_intents`] closes a dead run's. The request of
    /// such an intent may have reached LINE, so it stays counted until a
    /// listing settles it. Run on a store fenced with the new grant.
    ///
    /// # Errors
    ///
    /// As [`Store::close_lost_intents`]; [`StoreError::Pg`] when the fence
    /// fails.
    pub fn close_intents_of_older_epochs(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<IssueIntent>, StoreError> {
        let Some(fence) = self.fence().cloned() else {
            return Err(StoreError::Internal {
                what: "a takeover's intents are closed through a store fenced with the new grant"
                    .to_owned(),
            });
        };
        self.close_intents_of_others(now, Some(&fence))
    }

    /// Closes every open intent, or with a fence the channel's open
    /// intents of epochs before the fence's, as lost.
    fn close_intents_of_others(
        &self,
        now: DateTime<Utc>,
        fence: Option<&super::Fence>,
    ) -> Result<Vec<IssueIntent>, StoreError> {
        self.write_db("closing issuance intents of a previous run", |tx| {
            let open = match fence {
                None => query_intents(
                    tx,
                    &format!(
                        "SELECT {INTENT_COLUMNS} FROM issue_intents WHERE outcome = 'open' ORDER BY id"
                    ),
                    p![],
                )?,
                Some(fence) => query_intents(
                    tx,
                    &format!(
                        "SELECT {INTENT_COLUMNS} FROM issue_intents WHERE outcome = 'open' \
                         AND channel_id = ?1 AND (epoch IS NULL OR epoch < ?2) ORDER BY id"
                    ),
                    p![fence.channel.as_str(), fence.epoch.0],
                )?,
            };
            let mut closed = Vec::with_capacity(open.len());
            for mut intent in open {
                // Only a v2.1 issuance can be settled by a key-ID listing, so
                // only it stays counted until one: a short-lived token LINE
                // may have issued is invisible (docs/design.md §4.1), and
                // counting it would hold the v2.1 pool for nothing.
                // EXISTS, not `coalesce(kind = 'short-lived', 0)`: on
                // PostgreSQL the comparison is a BOOLEAN, which does not
                // mix with 0; EXISTS reads as 0/1 on both.
                let short_lived = tx.query_one(
                    "SELECT EXISTS (SELECT 1 FROM groups \
                     WHERE channel_id = ?1 AND name = ?2 AND kind = 'short-lived')",
                    p![intent.channel_id.as_str(), intent.group.as_str()],
                    |row| row.get_int(0),
                )? == 1;
                let reason = match (short_lived, fence.is_some()) {
                    (true, _) => LOST_SHORT_LIVED_REASON,
                    (false, false) => LOST_REASON,
                    (false, true) => TAKEN_OVER_REASON,
                };
                tx.execute(
                    "UPDATE issue_intents SET outcome = 'lost', finished_at = ?2, error = ?3, \
                     maybe_issued = ?4 WHERE id = ?1",
                    p![intent.id.0, millis(now), reason, !short_lived],
                )?;
                insert_event(
                    tx,
                    now,
                    &intent.channel_id,
                    Some(&intent.group),
                    None,
                    EventKind::IntentLost,
                    &format!(
                        "issuance intent {} started at {} was never completed; {reason}",
                        intent.id,
                        intent.started_at.to_rfc3339()
                    ),
                )?;
                intent.outcome = IntentOutcome::Lost;
                intent.finished_at = Some(now);
                intent.error = Some(reason.to_owned());
                closed.push(intent);
            }
            Ok(closed)
        })
    }

    /// When each issuance of the channel at or after `since` began, oldest
    /// first, whatever its outcome (failed and lost attempts count: each
    /// reached, or may have reached, LINE).
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn issue_times_since(
        &self,
        channel: &ChannelId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(GroupName, DateTime<Utc>)>, StoreError> {
        Ok(self
            .issue_times_in(Scope::Channel(channel), since)?
            .into_iter()
            .map(|(_, group, at)| (group, at))
            .collect())
    }

    /// [`Self::issue_times_since`] for one channel or all, each with its
    /// channel.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn issue_times_in(
        &self,
        scope: Scope<'_>,
        since: DateTime<Utc>,
    ) -> Result<Vec<(ChannelId, GroupName, DateTime<Utc>)>, StoreError> {
        self.read_db("counting recent issuances", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT channel_id, group_name, started_at FROM issue_intents \
                     WHERE {} AND started_at >= ?2 ORDER BY started_at, id",
                    scope.condition("channel_id")
                ),
                p![scope.param(), millis(since)],
                |row| {
                    Ok((
                        ChannelId::new(row.get_text(0)?),
                        GroupName::new(row.get_text(1)?),
                        row.time(2, "started_at")?,
                    ))
                },
            )?)
        })
    }

    /// Up to which intent of the channel a key-ID listing asked for at
    /// `listing_asked_at` settles (0 when none): the newest intent, except
    /// that a possibly-issued intent of a lease epoch (a takeover closed it,
    /// docs/design.md §14.3) is settled only by a listing asked for after
    /// its assertion expired plus `line_clock_allowance` (default
    /// [`crate::ha::orphan::LINE_CLOCK_ALLOWANCE`]): before then its
    /// request may still reach LINE (a paused leader), so the listing
    /// stops short of it and it stays counted, unless the token it issued
    /// is a recorded orphan LINE revoked.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn settleable_through(
        &self,
        channel: &ChannelId,
        listing_asked_at: DateTime<Utc>,
        line_clock_allowance: chrono::Duration,
    ) -> Result<i64, StoreError> {
        self.read_db("reading which issuances a listing settles", |db| {
            // An intent whose orphan was revoked is settled already: its
            // request issued that token, and LINE no longer counts it.
            Ok(db.query_one(
                "SELECT coalesce(max(id), 0) FROM issue_intents WHERE channel_id = ?1 AND id < \
                 coalesce((SELECT min(i.id) FROM issue_intents i WHERE i.channel_id = ?1 \
                   AND i.outcome = 'lost' AND i.maybe_issued = 1 AND i.epoch IS NOT NULL \
                   AND i.assertion_exp IS NOT NULL AND i.assertion_exp + ?3 > ?2 \
                   AND NOT EXISTS (SELECT 1 FROM fenced_orphans o WHERE o.intent_id = i.id \
                     AND o.revoke_outcome = 'revoked')), ?4)",
                p![
                    channel.as_str(),
                    millis(listing_asked_at),
                    line_clock_allowance.num_milliseconds(),
                    i64::MAX
                ],
                |row| row.get_int(0),
            )?)
        })
    }

    /// The newest intent of the channel (0 when none): a key-ID listing
    /// asked for after it settles every intent up to it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn newest_intent_id(&self, channel: &ChannelId) -> Result<i64, StoreError> {
        self.read_db("reading the newest issuance", |db| {
            Ok(db.query_one(
                "SELECT coalesce(max(id), 0) FROM issue_intents WHERE channel_id = ?1",
                p![channel.as_str()],
                |row| row.get_int(0),
            )?)
        })
    }
}

impl Store {
    /// Every issuance of the channel that began at or after `since`, in
    /// any outcome, oldest first: what `linetokd status` shows of recent
    /// failed and lost attempts.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn intents_since(
        &self,
        channel: &ChannelId,
        since: DateTime<Utc>,
    ) -> Result<Vec<IssueIntent>, StoreError> {
        self.read_db("listing recent issuances", |db| {
            query_intents(
                db,
                &format!(
                    "SELECT {INTENT_COLUMNS} FROM issue_intents \
                     WHERE channel_id = ?1 AND started_at >= ?2 ORDER BY started_at, id"
                ),
                p![channel.as_str(), millis(since)],
            )
        })
    }

    /// The issue attempts of one channel or all since `since` that failed
    /// or were lost in a crash (what `status` lists), oldest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn unfinished_intents_in(
        &self,
        scope: Scope<'_>,
        since: DateTime<Utc>,
    ) -> Result<Vec<IssueIntent>, StoreError> {
        self.read_db("listing recent failed issuances", |db| {
            query_intents(
                db,
                &format!(
                    "SELECT {INTENT_COLUMNS} FROM issue_intents \
                     WHERE {} AND started_at >= ?2 AND outcome IN ('failed', 'lost') \
                     ORDER BY started_at, id",
                    scope.condition("channel_id")
                ),
                p![scope.param(), millis(since)],
            )
        })
    }

    /// [`Self::unsettled_issues`] of every channel that has any, each
    /// past its own `channels.settled_through_intent`: one `(channel,
    /// group)` per attempt, by channel, oldest first within each. That
    /// order, and the literal outcome and `maybe_issued` terms, let SQLite
    /// read the partial index `issue_intents_maybe_issued` (schema 13)
    /// rather than every attempt ever made.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn unsettled_issues_by_channel(&self) -> Result<Vec<(ChannelId, GroupName)>, StoreError> {
        self.read_db("listing unsettled issuances", |db| {
            Ok(db.query_map(UNSETTLED_BY_CHANNEL, p![], |row| {
                Ok((
                    ChannelId::new(row.get_text(0)?),
                    GroupName::new(row.get_text(1)?),
                ))
            })?)
        })
    }

    /// Issue attempts of a channel started at or after `since` whose
    /// outcome is unknown (lost in a crash, or failed in a way LINE may
    /// have issued anyway), settled or not, oldest first: `(intent ID,
    /// group, started_at)`, leaving out those whose token was recorded as
    /// an orphan (its key ID is known). What `lost_token` is judged from.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn unknown_outcomes_since(
        &self,
        channel: &ChannelId,
        since: DateTime<Utc>,
    ) -> Result<Vec<(i64, GroupName, DateTime<Utc>)>, StoreError> {
        self.read_db("listing issuances of unknown outcome", |db| {
            // An issuance whose token was recorded as an orphan has a known
            // outcome: that key ID (the orphan record), not an unknown one.
            Ok(db.query_map(
                "SELECT i.id, i.group_name, i.started_at FROM issue_intents i \
                 WHERE i.channel_id = ?1 AND i.started_at >= ?2 \
                 AND i.outcome IN ('failed', 'lost') AND i.maybe_issued = 1 \
                 AND NOT EXISTS (SELECT 1 FROM fenced_orphans o WHERE o.intent_id = i.id) \
                 ORDER BY i.id",
                p![channel.as_str(), millis(since)],
                |row| {
                    Ok((
                        row.get_int(0)?,
                        GroupName::new(row.get_text(1)?),
                        row.time(2, "started_at")?,
                    ))
                },
            )?)
        })
    }

    /// Under `[ha]`: the latest assertion expiry among the channel's
    /// unsettled (after `settled_through`) possibly-issued intents of a
    /// lease epoch, those a takeover closed, leaving out any whose orphan
    /// LINE revoked: until then plus LINE's clock allowance no listing
    /// settles them (docs/design.md §14.3). `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn held_assertion_exp(
        &self,
        channel: &ChannelId,
        settled_through: i64,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.read_db("reading the takeover's unsettled issuances", |db| {
            let ms = db.query_one(
                &format!(
                    "SELECT max(i.assertion_exp) FROM issue_intents i WHERE i.channel_id = ?1 \
                     AND i.id > ?2 AND {HELD_INTENT}"
                ),
                p![channel.as_str(), settled_through],
                |row| row.int(0),
            )?;
            Ok(ms.and_then(DateTime::from_timestamp_millis))
        })
    }

    /// [`Store::held_assertion_exp`] of every channel that has one, each
    /// after its own settled watermark: what `status` and `plan` read, so
    /// they show the holds the daemon's driver decides on.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn held_assertion_exps_by_channel(
        &self,
    ) -> Result<Vec<(ChannelId, DateTime<Utc>)>, StoreError> {
        self.read_db("reading the takeovers' unsettled issuances", |db| {
            Ok(db.query_map(&held_by_channel_sql(), p![], |row| {
                Ok((
                    ChannelId::new(row.get_text(0)?),
                    row.time(1, "assertion_exp")?,
                ))
            })?)
        })
    }

    /// Issue attempts of a channel whose outcome is unknown (lost in a
    /// crash, or failed in a way LINE may have issued anyway) that no
    /// reconcile has settled yet: those after intent `settled_through`,
    /// one group name per attempt, oldest first. Each may be a live token
    /// nobody recorded.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn unsettled_issues(
        &self,
        channel: &ChannelId,
        settled_through: i64,
    ) -> Result<Vec<GroupName>, StoreError> {
        self.read_db("listing unsettled issuances", |db| {
            Ok(db.query_map(
                "SELECT group_name FROM issue_intents WHERE channel_id = ?1 AND id > ?2 \
                 AND outcome IN ('failed', 'lost') AND maybe_issued = 1 ORDER BY id",
                p![channel.as_str(), settled_through],
                |row| Ok(GroupName::new(row.get_text(0)?)),
            )?)
        })
    }
}

fn open_intent(db: &dyn Db, intent: IntentId) -> Result<IssueIntent, Fail> {
    let journal = load_intent(db, intent)?.ok_or(StoreError::UnknownIntent { intent })?;
    if journal.outcome != IntentOutcome::Open {
        return Err(StoreError::IntentClosed {
            intent,
            outcome: journal.outcome.as_str(),
        }
        .into());
    }
    Ok(journal)
}

fn load_intent(db: &dyn Db, intent: IntentId) -> Result<Option<IssueIntent>, Fail> {
    let mut found = query_intents(
        db,
        &format!("SELECT {INTENT_COLUMNS} FROM issue_intents WHERE id = ?1"),
        p![intent.0],
    )?;
    Ok(found.pop())
}

fn query_intents(db: &dyn Db, sql: &str, params: &[Param<'_>]) -> Result<Vec<IssueIntent>, Fail> {
    Ok(db.query_map(sql, params, intent_from_row)?)
}

/// Decodes a row of [`INTENT_COLUMNS`], by position.
fn intent_from_row(row: &dyn SqlRow) -> Result<IssueIntent, SqlError> {
    let outcome = row.get_text(5)?;
    Ok(IssueIntent {
        id: IntentId(row.get_int(0)?),
        channel_id: ChannelId::new(row.get_text(1)?),
        group: GroupName::new(row.get_text(2)?),
        started_at: row.time(3, "started_at")?,
        finished_at: row.opt_time(4, "finished_at")?,
        outcome: IntentOutcome::parse(&outcome).ok_or_else(|| {
            SqlError::Column(format!(
                "issue_intents.outcome holds unknown outcome {outcome:?}"
            ))
        })?,
        key_id: row.text(6)?.map(KeyId::new),
        error: row.text(7)?,
    })
}

#[cfg(test)]
mod tests {
    /// [`super::intent_from_row`] reads by position; this is the order it
    /// reads in. Reorder both or neither.
    #[test]
    fn intent_columns_are_in_the_order_the_decoder_reads() {
        let columns: Vec<&str> = super::INTENT_COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(
            columns,
            [
                "id",
                "channel_id",
                "group_name",
                "started_at",
                "finished_at",
                "outcome",
                "key_id",
                "error"
            ]
        );
    }
}
