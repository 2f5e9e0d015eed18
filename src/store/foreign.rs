//! Reconcile: apply LINE's list of a channel's valid key IDs to the store
//! (docs/design.md section 4, step 5).
//!
//! Ours that LINE no longer lists are gone; key IDs LINE lists that are not
//! ours are foreign, kept with the first time they were seen so status can
//! say how long someone else has been issuing on the channel. Their values
//! are unknown, so they cannot be revoked; they count against capacity until
//! LINE stops listing them.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use super::events::insert_event;
use super::sql::{Db, SqlError, SqlRow, p};
use super::sync::load_channel;
use super::tokens::{TOKEN_COLUMNS, change_state, expire_in, query_tokens};
use super::{EventKind, Fail, Scope, Store, StoreError, millis};
use crate::domain::{ChannelId, KeyId, TokenState};

/// How close to its expiry a token of ours may be, at the instant the key
/// IDs were asked for, and still count as expired rather than gone when
/// LINE leaves it out of the list: LINE builds the list a moment after the
/// request, by a clock that may run a little ahead of ours. Found by an
/// outside test: a token expiring 2 ms after the request was marked gone,
/// "revoked outside linetokd?". Kept short: a token revoked outside
/// linetokd within it is reported as expired, not gone (an earlier two
/// minutes hid every outside revocation of the demo's 2-minute tokens).
const UNLISTED_EXPIRY_SLACK: chrono::Duration = chrono::Duration::seconds(10);

/// A key ID LINE listed on a channel that linetokd did not issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKid {
    /// The channel.
    pub channel_id: ChannelId,
    /// The key ID.
    pub key_id: KeyId,
    /// The first reconcile that saw it.
    pub first_seen_at: DateTime<Utc>,
    /// The last reconcile that saw it.
    pub last_seen_at: DateTime<Utc>,
    /// The first reconcile that no longer saw it; `None` while listed.
    pub gone_at: Option<DateTime<Utc>>,
}

/// What [`Store::reconcile`] changed and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Ours that passed their expiry.
    pub expired: Vec<KeyId>,
    /// Ours, recorded live and not expired, that LINE no longer lists.
    pub gone: Vec<KeyId>,
    /// Foreign key IDs seen for the first time (or again after they had
    /// gone).
    pub new_foreign: Vec<KeyId>,
    /// Foreign key IDs no longer listed.
    pub foreign_gone: Vec<KeyId>,
    /// Ours still recorded live after the reconcile.
    pub ours_live: u32,
    /// Foreign key IDs LINE lists now.
    pub foreign_live: u32,
}

impl Store {
    /// Applies `live_kids`, LINE's list of the channel's valid key IDs, in
    /// one transaction:
    ///
    /// 1. ours past their expiry become expired;
    /// 2. ours recorded live but not listed become gone, except tokens
    ///    issued at or after `now` (LINE may have issued them after it built
    ///    the list) and tokens expiring within `UNLISTED_EXPIRY_SLACK` of
    ///    `now`, which become expired;
    /// 3. listed key IDs that are not ours are upserted as foreign, keeping
    ///    `first_seen_at`; foreign ones no longer listed get `gone_at`;
    /// 4. the channel's `last_reconcile_at` becomes `now`, its listing
    ///    failure streak ends, and every issue intent up to
    ///    `settles_through` (the newest intent ID when the list was asked
    ///    for: see [`Store::newest_intent_id`]) is settled: an unknown
    ///    outcome among them is now either one of the listed foreign key
    ///    IDs or nothing.
    ///
    /// `now` must be the time the list was requested, not when it arrived.
    /// Every change is also an event.
    ///
    /// # Errors
    ///
    /// [`StoreError::UnknownChannel`], [`StoreError::Query`],
    /// [`StoreError::ReadOnly`].
    pub fn reconcile(
        &self,
        now: DateTime<Utc>,
        channel: &ChannelId,
        live_kids: &[KeyId],
        settles_through: i64,
    ) -> Result<ReconcileReport, StoreError> {
        self.write_db("reconciling against LINE's key IDs", |tx| {
            if load_channel(tx, channel)?.is_none() {
                return Err(StoreError::UnknownChannel {
                    channel: channel.clone(),
                }
                .into());
            }
            let listed: BTreeSet<&KeyId> = live_kids.iter().collect();
            let mut report = ReconcileReport {
                expired: expire_in(tx, &self.inner.values, now, Scope::Channel(channel))?,
                ..ReconcileReport::default()
            };

            let live = query_tokens(
                tx,
                &self.inner.values,
                &format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE channel_id = ?1 AND state = 'live' \
                     AND substr(key_id, 1, 3) <> 'sl:' ORDER BY issued_at, key_id{}",
                    tx.dialect().bytewise()
                ),
                p![channel.as_str()],
            )?;
            // Short-lived tokens are never listed (`sl:` identities): only
            // v2.1 ones can be missing from the list.
            let mut expired_unlisted = 0;
            for token in &live {
                if token.record.issued_at < now && !listed.contains(&token.record.key_id) {
                    // One that expired while the list was built (or by
                    // LINE's clock, a little ahead of ours) simply expired.
                    let expiring = token.record.expires_at <= now + UNLISTED_EXPIRY_SLACK;
                    let (state, why) = if expiring {
                        (TokenState::Expired, "expired (LINE no longer lists it)")
                    } else {
                        (
                            TokenState::Gone,
                            "no longer listed by LINE as valid (revoked outside linetokd?)",
                        )
                    };
                    change_state(tx, now, token, state, why)?;
                    if expiring {
                        report.expired.push(token.record.key_id.clone());
                        expired_unlisted += 1;
                    } else {
                        report.gone.push(token.record.key_id.clone());
                    }
                }
            }
            report.ours_live = count(live.len() - report.gone.len() - expired_unlisted);

            let ours = ours_among(tx, channel, &listed)?;
            for kid in listed.iter().filter(|k| !ours.contains(**k)) {
                if upsert_foreign(tx, now, channel, kid)? {
                    insert_event(
                        tx,
                        now,
                        channel,
                        None,
                        Some(kid),
                        EventKind::ForeignSeen,
                        "listed by LINE but not issued by linetokd",
                    )?;
                    report.new_foreign.push((*kid).clone());
                }
                report.foreign_live += 1;
            }

            for kid in foreign_listed_before(tx, channel)? {
                if !listed.contains(&kid) {
                    tx.execute(
                        "UPDATE foreign_kids SET gone_at = ?3 WHERE channel_id = ?1 AND key_id = ?2",
                        p![channel.as_str(), kid.as_str(), millis(now)],
                    )?;
                    insert_event(
                        tx,
                        now,
                        channel,
                        None,
                        Some(&kid),
                        EventKind::ForeignGone,
                        "no longer listed by LINE",
                    )?;
                    report.foreign_gone.push(kid);
                }
            }

            // A successful listing ends the channel's listing streak and
            // settles every attempt journaled before it was asked for. The
            // larger of the two by CASE: SQLite's two-argument max() is
            // PostgreSQL's greatest(), and neither has the other's.
            tx.execute(
                "UPDATE channels SET last_reconcile_at = ?2, reconcile_failures = 0, \
                 reconcile_retry_not_before = NULL, reconcile_error = NULL, \
                 settled_through_intent = CASE WHEN settled_through_intent < ?3 THEN ?3 \
                 ELSE settled_through_intent END WHERE id = ?1",
                p![channel.as_str(), millis(now), settles_through],
            )?;
            Ok(report)
        })
    }

    /// The foreign key IDs ever seen on a channel, first seen first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn foreign_kids(&self, channel: &ChannelId) -> Result<Vec<ForeignKid>, StoreError> {
        self.foreign_kids_in(Scope::Channel(channel))
    }

    /// [`Self::foreign_kids`] of one channel or of all.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub fn foreign_kids_in(&self, scope: Scope<'_>) -> Result<Vec<ForeignKid>, StoreError> {
        self.read_db("listing foreign key IDs", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT {FOREIGN_COLUMNS} FROM foreign_kids \
                     WHERE {} ORDER BY first_seen_at, key_id{}",
                    scope.condition("channel_id"),
                    db.dialect().bytewise()
                ),
                p![scope.param()],
                foreign_from_row,
            )?)
        })
    }

    /// The foreign key IDs the last reconcile saw listed on a channel
    /// (what counts against capacity), by key ID, without reading the ones
    /// long gone.
    ///
    /// # Errors
    ///
    /// [`StoreError::Query`].
    pub fn live_foreign_kids(&self, channel: &ChannelId) -> Result<Vec<ForeignKid>, StoreError> {
        self.read_db("listing foreign key IDs", |db| {
            Ok(db.query_map(
                &format!(
                    "SELECT {FOREIGN_COLUMNS} FROM foreign_kids \
                     WHERE channel_id = ?1 AND gone_at IS NULL ORDER BY key_id{}",
                    db.dialect().bytewise()
                ),
                p![channel.as_str()],
                foreign_from_row,
            )?)
        })
    }
}

/// The listed key IDs that are ours (stored tokens of the channel, in any
/// state: a token we think dead but LINE still lists is still not foreign).
fn ours_among(
    tx: &dyn Db,
    channel: &ChannelId,
    listed: &BTreeSet<&KeyId>,
) -> Result<BTreeSet<KeyId>, Fail> {
    let mut ours = BTreeSet::new();
    for kid in listed {
        let found = tx.query_opt(
            "SELECT 1 FROM tokens WHERE channel_id = ?1 AND key_id = ?2",
            p![channel.as_str(), kid.as_str()],
            |_| Ok(()),
        )?;
        if found.is_some() {
            ours.insert((*kid).clone());
        }
    }
    Ok(ours)
}

/// Records a sighting; true when the key ID is new, or back after it had
/// gone.
fn upsert_foreign(
    tx: &dyn Db,
    now: DateTime<Utc>,
    channel: &ChannelId,
    kid: &KeyId,
) -> Result<bool, Fail> {
    // A 0/1 integer on SQLite, a BOOLEAN on PostgreSQL: `int` reads both.
    let was_live = tx.query_opt(
        "SELECT gone_at IS NULL FROM foreign_kids WHERE channel_id = ?1 AND key_id = ?2",
        p![channel.as_str(), kid.as_str()],
        |row| Ok(row.get_int(0)? != 0),
    )?;
    tx.execute(
        "INSERT INTO foreign_kids (channel_id, key_id, first_seen_at, last_seen_at) \
         VALUES (?1, ?2, ?3, ?3) \
         ON CONFLICT (channel_id, key_id) DO UPDATE SET last_seen_at = ?3, gone_at = NULL",
        p![channel.as_str(), kid.as_str(), millis(now)],
    )?;
    Ok(was_live != Some(true))
}

/// Foreign key IDs of the channel not yet marked gone, by key ID.
fn foreign_listed_before(tx: &dyn Db, channel: &ChannelId) -> Result<Vec<KeyId>, Fail> {
    Ok(tx.query_map(
        &format!(
            "SELECT key_id FROM foreign_kids WHERE channel_id = ?1 AND gone_at IS NULL \
             ORDER BY key_id{}",
            tx.dialect().bytewise()
        ),
        p![channel.as_str()],
        |row| Ok(KeyId::new(row.get_text(0)?)),
    )?)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The columns [`foreign_from_row`] reads, in its order.
const FOREIGN_COLUMNS: &str = "channel_id, key_id, first_seen_at, last_seen_at, gone_at";

/// Decodes a row of [`FOREIGN_COLUMNS`], by position.
fn foreign_from_row(row: &dyn SqlRow) -> Result<ForeignKid, SqlError> {
    Ok(ForeignKid {
        channel_id: ChannelId::new(row.get_text(0)?),
        key_id: KeyId::new(row.get_text(1)?),
        first_seen_at: row.time(2, "foreign_kids.first_seen_at")?,
        last_seen_at: row.time(3, "foreign_kids.last_seen_at")?,
        gone_at: row.opt_time(4, "foreign_kids.gone_at")?,
    })
}
