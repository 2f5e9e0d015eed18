//! The lease and orphan statements on PostgreSQL (docs/design.md §14.1,
//! §14.3): `channel_leases` and `fenced_orphans` (schema version 11).
//!
//! [`crate::ha::lease`] is the model: each statement here gives the answer
//! its pure function gives for the row and the database's `now` at the
//! statement, and the integration tests (`tests/it/pg_lease.rs`) check the
//! sequences against it. Every instant is the **database's**
//! `clock_timestamp()` in unix milliseconds, read inside the statement
//! that decides; no host clock is passed in or compared.
//!
//! - [`PgPool::acquire_lease`]: one `INSERT … ON CONFLICT DO UPDATE … WHERE
//!   valid_until <= now`: absent → epoch 1, expired → epoch + 1, a valid
//!   row stands (even the caller's own). Concurrent acquirers serialize on
//!   the row: exactly one is granted.
//! - [`PgPool::renew_leases`] (and [`PgPool::renew_lease`] for one):
//!   `UPDATE … WHERE holder AND epoch AND valid_until > now` for all of an
//!   instance's due grants in one statement: never revives a lapsed grant. Answers the new
//!   `valid_until` and the database's `now`, from which the holder computes
//!   its local deadline ([`crate::ha::local`]).
//! - [`PgPool::release_lease`]: the same condition, `valid_until = now`.
//! - [`fence`]: first statement of every write transaction for a channel:
//!   locks the caller's grant row `FOR SHARE` and judges it at the
//!   database's now read after the lock. A takeover's update needs a lock
//!   that conflicts with it, so it waits until the write transaction ends
//!   and then reads everything it committed.
//! - [`PgPool::leases`]: every row and the database's now, for `status`.
//! - [`PgPool::record_orphan`], [`PgPool::settle_orphan`],
//!   [`PgPool::orphans`]: the unfenced record of tokens whose store failed
//!   the fence, by key ID (the table has no column for a value).
//!
//! A refused renewal, release or fence reads the row again to say whose
//! the lease is instead ([`NotHeld`], judged by [`lease::check`] at the
//! refused statement's `now`); the decision itself is the one statement.
//!
//! Every statement runs on its own in autocommit, except [`fence`], which
//! runs inside the caller's transaction: no row lock is ever held between
//! two round trips, so a paused instance blocks nobody's acquire or
//! renewal except through a write transaction it left open (the caller's
//! statement and idle-in-transaction timeouts must bound that).
//!
//! Depends on tokio-postgres, [`crate::ha`] (the model and its types) and
//! `domain`; nothing above the store.

use chrono::{DateTime, Duration, Utc};
use tokio_postgres::{GenericClient, Row};

use super::{PgError, PgPool};
use crate::domain::{ChannelId, GroupName, KeyId};
use crate::ha::lease::{self, Epoch, InstanceId, Lease, NotHeld};
use crate::ha::{AcquireAnswer, RenewAnswer};
use crate::store::IntentId;

/// The database's clock, in unix milliseconds (truncated, so never ahead
/// of the database's own instant). `clock_timestamp()`, not `now()`: the
/// latter is the transaction's start, which a fence run late in a long
/// transaction, or a statement that waited for a lock, would read as if
/// no time had passed.
pub(in crate::store) const NOW_MS: &str =
    "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// A TTL in milliseconds, bounded so `now + ttl` cannot overflow a BIGINT
/// before the statement clamps it to chrono's range.
fn ttl_ms(ttl: Duration) -> i64 {
    let span = max_ms().saturating_mul(2);
    ttl.num_milliseconds().clamp(-span, span)
}

/// The latest instant chrono holds, in milliseconds: `valid_until` is
/// clamped to chrono's range, as the model's `plus` clamps, so an absurd
/// TTL gives an absurd instant, never an overflow.
fn max_ms() -> i64 {
    DateTime::<Utc>::MAX_UTC.timestamp_millis()
}

/// The earliest instant chrono holds, in milliseconds.
fn min_ms() -> i64 {
    DateTime::<Utc>::MIN_UTC.timestamp_millis()
}

/// `now + ttl` clamped to chrono's range, in SQL (`now` and `ttl` are
/// expressions of the statement).
fn plus_sql(now: &str, ttl: &str) -> String {
    format!("least(greatest({now} + {ttl}, {}), {})", min_ms(), max_ms())
}

/// Every lease row and the database's now, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseTable {
    /// The database's now when the rows were read: a row is valid iff
    /// `db_now < valid_until` ([`Lease::is_valid_at`]).
    pub db_now: DateTime<Utc>,
    /// Each channel ever led and its row, by channel ID.
    pub leases: Vec<(ChannelId, Lease)>,
}

/// What a heartbeat found ([`PgPool::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The instances alive, in ID order.
    pub alive: Vec<InstanceId>,
    /// When this instance's ID is alive under another process
    /// (incarnation): until when that row counts as alive. `None`: the
    /// row is this process's.
    pub taken_until: Option<DateTime<Utc>>,
    /// Each instance alive and the digest of the channels and groups its
    /// config names.
    pub configs: Vec<(InstanceId, String)>,
}

/// A token to record as an orphan: LINE issued it, its store failed the
/// fence, it is never published. No value: only its key ID.
#[derive(Debug, Clone, Copy)]
pub struct NewOrphan<'a> {
    /// Its channel.
    pub channel: &'a ChannelId,
    /// Its group.
    pub group: &'a GroupName,
    /// LINE's key ID.
    pub key_id: &'a KeyId,
    /// The epoch its intent was committed under.
    pub epoch: Epoch,
    /// The intent its request was sent for.
    pub intent: IntentId,
    /// The instance that got it (and lost its grant).
    pub recorded_by: &'a InstanceId,
    /// When it expires (from the instant its request was sent plus LINE's
    /// `expires_in`, as a stored token's): until then it counts against the
    /// channel's capacity unless revoked.
    pub expires_at: DateTime<Utc>,
}

/// Where an orphan's revocation stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrphanRevoke {
    /// Not tried yet.
    Pending,
    /// LINE revoked it (database time).
    Revoked {
        /// When the revocation was recorded.
        at: DateTime<Utc>,
    },
    /// The last try failed; it may be tried again.
    Failed {
        /// Why (a LINE error's message: never a token value).
        detail: String,
    },
    /// The channel secret is not configured: it cannot be revoked and lives
    /// until it expires, alerted as a lost token.
    NoSecret,
}

/// What a revocation attempt of an orphan came to ([`PgPool::settle_orphan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// LINE revoked it.
    Revoked,
    /// It failed; `detail` says why (a LINE error's message, never a token
    /// value).
    Failed(String),
    /// No channel secret: nothing to try.
    NoSecret,
}

/// One `fenced_orphans` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The row's ID.
    pub id: i64,
    /// Its channel.
    pub channel: ChannelId,
    /// Its group.
    pub group: GroupName,
    /// LINE's key ID.
    pub key_id: KeyId,
    /// The epoch its intent was committed under.
    pub epoch: Epoch,
    /// The intent its request was sent for.
    pub intent: IntentId,
    /// The instance that recorded it.
    pub recorded_by: InstanceId,
    /// When it was recorded (database time).
    pub recorded_at: DateTime<Utc>,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Its revocation.
    pub revoke: OrphanRevoke,
}

/// The longest revoke detail kept: a message, not a document.
const DETAIL_MAX: usize = 500;

impl PgPool {
    pub(super) fn query_error(
        &self,
        what: &'static str,
    ) -> impl FnOnce(tokio_postgres::Error) -> PgError {
        let target = self.target().to_owned();
        move |source| PgError::Query {
            target,
            what,
            source,
        }
    }

    fn time(&self, table: &'static str, col: &str, ms: i64) -> Result<DateTime<Utc>, PgError> {
        DateTime::from_timestamp_millis(ms).ok_or_else(|| PgError::BadRow {
            target: self.target().to_owned(),
            table,
            reason: format!("{col} holds {ms}, which is not a time"),
        })
    }

    fn lease_of(&self, holder: String, epoch: i64, valid_until: i64) -> Result<Lease, PgError> {
        Ok(Lease {
            holder: InstanceId::new(holder),
            epoch: Epoch(epoch),
            valid_until: self.time("channel_leases", "valid_until", valid_until)?,
        })
    }

    /// Takes `channel`'s lease for `me` for `ttl` when its row is absent
    /// (epoch 1) or expired at the database's now (its epoch + 1), as
    /// [`lease::acquire`]. A row still valid stands, even `me`'s own.
    ///
    /// The answer is [`AcquireAnswer::Granted`] (the row written and the
    /// database's now in the statement) or [`AcquireAnswer::Held`] (the
    /// standing row, read just after the refusal: by then it may have been
    /// renewed or have expired, but it is the row that stood or its
    /// successor). An `Err` is the caller's [`AcquireAnswer::Failed`]: the
    /// row may or may not have been written.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`] or [`PgError::Query`] when the statement could
    /// not run; [`PgError::BadRow`] when the row holds no time.
    pub async fn acquire_lease(
        &self,
        channel: &ChannelId,
        me: &InstanceId,
        ttl: Duration,
    ) -> Result<AcquireAnswer, PgError> {
        let conn = self.get().await?;
        // `t` is evaluated once (clock_timestamp() is volatile, so the CTE
        // is materialized): the judgement and the new valid_until use one
        // instant. The conflict arm waits for any lock on the row (a fenced
        // write's FOR SHARE, a concurrent acquire) and then judges the row's
        // newest version, so two acquirers of one expired row serialize and
        // the second sees the first's grant.
        let sql = format!(
            "WITH t AS (SELECT {NOW_MS} AS now)
             INSERT INTO channel_leases AS l (channel_id, holder, epoch, valid_until)
             SELECT $1, $2, 1, {plus} FROM t
             ON CONFLICT (channel_id) DO UPDATE
                SET holder = EXCLUDED.holder,
                    epoch = CASE WHEN l.epoch < {max} THEN l.epoch + 1 ELSE l.epoch END,
                    valid_until = EXCLUDED.valid_until
              WHERE l.valid_until <= (SELECT now FROM t)
             RETURNING l.holder, l.epoch, l.valid_until, (SELECT now FROM t)",
            max = i64::MAX,
            plus = plus_sql("t.now", "$3"),
        );
        let rows = conn
            .query(&sql, &[&channel.as_str(), &me.as_str(), &ttl_ms(ttl)])
            .await
            .map_err(self.query_error("acquiring a channel's lease"))?;
        if let Some(row) = rows.first() {
            let lease = self.lease_of(row.get(0), row.get(1), row.get(2))?;
            let db_now = self.time("channel_leases", "now", row.get(3))?;
            return Ok(AcquireAnswer::Granted { db_now, lease });
        }
        // Refused: a row exists (the conflict arm ran) and rows are never
        // deleted, so it is there to read.
        let (row, _) = read_lease(&**conn, self, channel).await?;
        row.map(AcquireAnswer::Held).ok_or_else(|| PgError::BadRow {
            target: self.target().to_owned(),
            table: "channel_leases",
            reason: format!("the lease row of channel {channel} refused an acquire and vanished"),
        })
    }

    /// Extends `me`'s grant of `epoch` on `channel` to the database's now +
    /// `ttl`, only while it is still valid, as [`lease::renew`]: a lapsed
    /// grant is never revived.
    ///
    /// The answer is [`RenewAnswer::Renewed`] (the new `valid_until` and the
    /// database's now in the statement: the holder's local deadline is
    /// `sent_at + (valid_until − db_now)`, [`crate::ha::local::deadline`])
    /// or [`RenewAnswer::Refused`] saying whose the lease is. An `Err` is
    /// the caller's [`RenewAnswer::Failed`]: the outcome is unknown, step
    /// down.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`], [`PgError::BadRow`];
    /// [`PgError::LeaseConflict`] when the refusal cannot be explained by
    /// the row (two instances under one instance ID).
    pub async fn renew_lease(
        &self,
        channel: &ChannelId,
        me: &InstanceId,
        epoch: Epoch,
        ttl: Duration,
    ) -> Result<RenewAnswer, PgError> {
        let mut answers = self
            .renew_leases(&[(channel.clone(), epoch)], me, ttl)
            .await?;
        answers.pop().ok_or_else(|| PgError::BadRow {
            target: self.target().to_owned(),
            table: "channel_leases",
            reason: "renewing one lease answered no row".to_owned(),
        })
    }

    /// [`PgPool::renew_lease`] for every grant in `grants` at once: one
    /// statement, so one round trip whatever the number of channels an
    /// instance leads (renewing them one by one, thousands of channels
    /// would take longer than a renewal interval). Each grant is judged at
    /// the statement's one `now`; the answers come in `grants`' order.
    ///
    /// # Errors
    ///
    /// As [`PgPool::renew_lease`]: an `Err` leaves every grant's outcome
    /// unknown.
    pub async fn renew_leases(
        &self,
        grants: &[(ChannelId, Epoch)],
        me: &InstanceId,
        ttl: Duration,
    ) -> Result<Vec<RenewAnswer>, PgError> {
        if grants.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.get().await?;
        let channels: Vec<&str> = grants.iter().map(|(c, _)| c.as_str()).collect();
        let epochs: Vec<i64> = grants.iter().map(|(_, e)| e.0).collect();
        // One row per grant, in its order: `now` and the new valid_until,
        // NULL where the update matched nothing.
        let sql = format!(
            "WITH t AS (SELECT {NOW_MS} AS now),
                  g AS (SELECT * FROM unnest($1::text[], $2::bigint[])
                                 WITH ORDINALITY AS g(channel_id, epoch, n)),
                  u AS (UPDATE channel_leases AS l
                           SET valid_until = {plus}
                          FROM t, g
                         WHERE l.channel_id = g.channel_id AND l.holder = $3
                           AND l.epoch = g.epoch AND l.valid_until > t.now
                        RETURNING l.channel_id, l.valid_until)
             SELECT t.now, u.valid_until
               FROM t CROSS JOIN g LEFT JOIN u ON u.channel_id = g.channel_id
              ORDER BY g.n",
            plus = plus_sql("t.now", "$4"),
        );
        let rows = conn
            .query(&sql, &[&channels, &epochs, &me.as_str(), &ttl_ms(ttl)])
            .await
            .map_err(self.query_error("renewing the channels' leases"))?;
        if rows.len() != grants.len() {
            return Err(PgError::BadRow {
                target: self.target().to_owned(),
                table: "channel_leases",
                reason: format!(
                    "renewing {} leases answered {} rows",
                    grants.len(),
                    rows.len()
                ),
            });
        }
        let mut answers = Vec::with_capacity(grants.len());
        for ((channel, epoch), row) in grants.iter().zip(&rows) {
            let db_now = self.time("channel_leases", "now", row.get(0))?;
            if let Some(valid_until) = row.get::<_, Option<i64>>(1) {
                let valid_until = self.time("channel_leases", "valid_until", valid_until)?;
                answers.push(RenewAnswer::Renewed {
                    db_now,
                    valid_until,
                });
            } else {
                let why = self
                    .why_not_held(&conn, "renewal", channel, me, *epoch, db_now)
                    .await?;
                answers.push(RenewAnswer::Refused(why));
            }
        }
        Ok(answers)
    }

    /// Ends `me`'s grant of `epoch` on `channel` at the database's now (a
    /// handover between steps, with no LINE call in flight), as
    /// [`lease::release`]. The row keeps its epoch, so the next acquire
    /// raises it.
    ///
    /// The inner `Err` says whose the lease was instead (nothing to
    /// release).
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`], [`PgError::BadRow`],
    /// [`PgError::LeaseConflict`] as for [`Self::renew_lease`].
    pub async fn release_lease(
        &self,
        channel: &ChannelId,
        me: &InstanceId,
        epoch: Epoch,
    ) -> Result<Result<Lease, NotHeld>, PgError> {
        let conn = self.get().await?;
        let sql = format!(
            "WITH t AS (SELECT {NOW_MS} AS now),
                  u AS (UPDATE channel_leases AS l SET valid_until = t.now
                          FROM t
                         WHERE l.channel_id = $1 AND l.holder = $2 AND l.epoch = $3
                           AND l.valid_until > t.now
                        RETURNING l.valid_until)
             SELECT t.now, (SELECT valid_until FROM u) FROM t"
        );
        let row = conn
            .query_one(&sql, &[&channel.as_str(), &me.as_str(), &epoch.0])
            .await
            .map_err(self.query_error("releasing a channel's lease"))?;
        let db_now = self.time("channel_leases", "now", row.get(0))?;
        if let Some(valid_until) = row.get::<_, Option<i64>>(1) {
            return Ok(Ok(Lease {
                holder: me.clone(),
                epoch,
                valid_until: self.time("channel_leases", "valid_until", valid_until)?,
            }));
        }
        let why = self
            .why_not_held(&conn, "release", channel, me, epoch, db_now)
            .await?;
        Ok(Err(why))
    }

    /// Why a renewal or release at `db_now` was refused: the row read now,
    /// judged by [`lease::check`] at the refused statement's instant.
    async fn why_not_held(
        &self,
        client: &tokio_postgres::Client,
        what: &'static str,
        channel: &ChannelId,
        me: &InstanceId,
        epoch: Epoch,
        db_now: DateTime<Utc>,
    ) -> Result<NotHeld, PgError> {
        let (row, _) = read_lease(client, self, channel).await?;
        match lease::check(row.as_ref(), me, epoch, db_now) {
            Err(why) => Ok(why),
            // The update found no such grant valid at db_now, and the epoch
            // of a (holder, epoch) pair is never granted twice: only a
            // second instance under the same ID could have made it so.
            Ok(()) => Err(PgError::LeaseConflict {
                target: self.target().to_owned(),
                what,
                channel: channel.clone(),
                holder: me.clone(),
                epoch,
            }),
        }
    }

    /// Every lease row and the database's now, for `status`.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`], [`PgError::BadRow`].
    pub async fn leases(&self) -> Result<LeaseTable, PgError> {
        let conn = self.get().await?;
        let sql = format!(
            "SELECT t.now, l.channel_id, l.holder, l.epoch, l.valid_until
               FROM (SELECT {NOW_MS} AS now) t
               LEFT JOIN channel_leases l ON true
              ORDER BY l.channel_id"
        );
        let rows = conn
            .query(&sql, &[])
            .await
            .map_err(self.query_error("reading the channels' leases"))?;
        let mut table = LeaseTable {
            db_now: DateTime::<Utc>::MIN_UTC,
            leases: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            table.db_now = self.time("channel_leases", "now", row.get(0))?;
            if let Some(channel) = row.get::<_, Option<String>>(1) {
                let lease = self.lease_of(row.get(2), row.get(3), row.get(4))?;
                table.leases.push((ChannelId::new(channel), lease));
            }
        }
        Ok(table)
    }

    /// Pushes `me`'s row of `ha_instances` to the database's now + `ttl`
    /// (docs/design.md §14.4), unless the row is alive under another
    /// `incarnation` (a second process with the same instance ID, or this
    /// one's previous run not yet aged out); deletes rows dead for a day;
    /// and answers the instances alive at the database's now (`me`
    /// included when pushed), in ID order.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`].
    pub async fn heartbeat(
        &self,
        me: &InstanceId,
        incarnation: &str,
        config: &str,
        ttl: Duration,
    ) -> Result<Heartbeat, PgError> {
        let conn = self.get().await?;
        let upsert = format!(
            "INSERT INTO ha_instances AS h (instance_id, alive_until, incarnation, config)
             VALUES ($1, {plus}, $3, $4)
             ON CONFLICT (instance_id) DO UPDATE
                SET alive_until = EXCLUDED.alive_until, incarnation = EXCLUDED.incarnation,
                    config = EXCLUDED.config
              WHERE h.incarnation = EXCLUDED.incarnation OR h.alive_until <= {NOW_MS}
             RETURNING 1",
            plus = plus_sql(NOW_MS, "$2"),
        );
        let pushed = !conn
            .query(
                &upsert,
                &[&me.as_str(), &ttl_ms(ttl), &incarnation, &config],
            )
            .await
            .map_err(self.query_error("recording this instance as alive"))?
            .is_empty();
        let day = Duration::days(1).num_milliseconds();
        let sweep = format!("DELETE FROM ha_instances WHERE alive_until < {NOW_MS} - $1");
        conn.execute(&sweep, &[&day])
            .await
            .map_err(self.query_error("deleting instances dead for a day"))?;
        let alive = format!(
            "SELECT instance_id, alive_until, config FROM ha_instances WHERE alive_until > {NOW_MS} \
             ORDER BY instance_id COLLATE \"C\""
        );
        let rows = conn
            .query(&alive, &[])
            .await
            .map_err(self.query_error("reading the instances alive"))?;
        let mut beat = Heartbeat {
            alive: Vec::with_capacity(rows.len()),
            taken_until: None,
            configs: Vec::with_capacity(rows.len()),
        };
        for row in &rows {
            let id = InstanceId::new(row.get::<_, String>(0));
            if !pushed && id == *me {
                beat.taken_until = Some(self.time("ha_instances", "alive_until", row.get(1))?);
            }
            beat.configs.push((id.clone(), row.get::<_, String>(2)));
            beat.alive.push(id);
        }
        Ok(beat)
    }

    /// Each channel with operator requests not yet carried out, and the
    /// newest such request's ID: the keeper wakes a led channel when that
    /// grows (another instance recorded a `linetokd rotate`).
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`].
    pub async fn channels_with_open_requests(&self) -> Result<Vec<(ChannelId, i64)>, PgError> {
        let conn = self.get().await?;
        let rows = conn
            .query(
                "SELECT channel_id, max(id) FROM requests WHERE done_at IS NULL GROUP BY channel_id",
                &[],
            )
            .await
            .map_err(self.query_error("looking for operator requests"))?;
        Ok(rows
            .iter()
            .map(|row| {
                (
                    ChannelId::new(row.get::<_, String>(0)),
                    row.get::<_, i64>(1),
                )
            })
            .collect())
    }

    /// Records an orphan (unfenced: the instance that lost its grant writes
    /// it) and answers the row. Recording the same key ID again changes
    /// nothing and answers the row recorded first, so a retry after an
    /// unknown commit outcome is harmless.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`], [`PgError::BadRow`].
    pub async fn record_orphan(&self, orphan: &NewOrphan<'_>) -> Result<Orphan, PgError> {
        let conn = self.get().await?;
        let sql = format!(
            "INSERT INTO fenced_orphans (channel_id, group_name, key_id, epoch, intent_id,
                                         recorded_by, recorded_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, {NOW_MS}, $7)
             ON CONFLICT (key_id) DO NOTHING"
        );
        conn.execute(
            &sql,
            &[
                &orphan.channel.as_str(),
                &orphan.group.as_str(),
                &orphan.key_id.as_str(),
                &orphan.epoch.0,
                &orphan.intent.get(),
                &orphan.recorded_by.as_str(),
                &orphan.expires_at.timestamp_millis(),
            ],
        )
        .await
        .map_err(self.query_error("recording an orphaned token"))?;
        let row = conn
            .query_one(
                &format!("SELECT {ORPHAN_COLUMNS} FROM fenced_orphans WHERE key_id = $1"),
                &[&orphan.key_id.as_str()],
            )
            .await
            .map_err(self.query_error("reading an orphaned token"))?;
        self.orphan_of(&row)
    }

    /// Records what a revocation attempt of the orphan `key_id` came to.
    /// A revoked orphan stays revoked (a late failure does not undo it).
    /// Answers false when no orphan has that key ID, or it was revoked
    /// already.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`].
    pub async fn settle_orphan(
        &self,
        key_id: &KeyId,
        outcome: &RevokeOutcome,
    ) -> Result<bool, PgError> {
        let conn = self.get().await?;
        let (name, detail) = match outcome {
            RevokeOutcome::Revoked => ("revoked", None),
            RevokeOutcome::Failed(detail) => ("failed", Some(cut(detail))),
            RevokeOutcome::NoSecret => ("no_secret", None),
        };
        let sql = format!(
            "UPDATE fenced_orphans
                SET revoke_outcome = $2, revoke_detail = $3,
                    revoked_at = CASE WHEN $2 = 'revoked' THEN {NOW_MS} END
              WHERE key_id = $1 AND revoke_outcome IS DISTINCT FROM 'revoked'"
        );
        let n = conn
            .execute(&sql, &[&key_id.as_str(), &name, &detail])
            .await
            .map_err(self.query_error("recording an orphan's revocation"))?;
        Ok(n > 0)
    }

    /// The orphans of `channel` (all channels' with `None`), oldest first.
    ///
    /// # Errors
    ///
    /// [`PgError::Connect`], [`PgError::Query`], [`PgError::BadRow`].
    pub async fn orphans(&self, channel: Option<&ChannelId>) -> Result<Vec<Orphan>, PgError> {
        let conn = self.get().await?;
        let rows = conn
            .query(
                &format!(
                    "SELECT {ORPHAN_COLUMNS} FROM fenced_orphans
                      WHERE $1::text IS NULL OR channel_id = $1
                      ORDER BY id"
                ),
                &[&channel.map(ChannelId::as_str)],
            )
            .await
            .map_err(self.query_error("reading the orphaned tokens"))?;
        rows.iter().map(|r| self.orphan_of(r)).collect()
    }

    fn orphan_of(&self, row: &Row) -> Result<Orphan, PgError> {
        const T: &str = "fenced_orphans";
        let outcome: Option<String> = row.get(10);
        let revoked_at: Option<i64> = row.get(9);
        let revoke = match (outcome.as_deref(), revoked_at) {
            (None, _) => OrphanRevoke::Pending,
            (Some("revoked"), Some(at)) => OrphanRevoke::Revoked {
                at: self.time(T, "revoked_at", at)?,
            },
            (Some("failed"), _) => OrphanRevoke::Failed {
                detail: row.get::<_, Option<String>>(11).unwrap_or_default(),
            },
            (Some("no_secret"), _) => OrphanRevoke::NoSecret,
            (Some(other), _) => {
                return Err(PgError::BadRow {
                    target: self.target().to_owned(),
                    table: T,
                    reason: format!("revoke_outcome holds {other:?} (revoked_at {revoked_at:?})"),
                });
            }
        };
        Ok(Orphan {
            id: row.get(0),
            channel: ChannelId::new(row.get::<_, String>(1)),
            group: GroupName::new(row.get::<_, String>(2)),
            key_id: KeyId::new(row.get::<_, String>(3)),
            epoch: Epoch(row.get(4)),
            intent: IntentId::from_raw(row.get(5)),
            recorded_by: InstanceId::new(row.get::<_, String>(6)),
            recorded_at: self.time(T, "recorded_at", row.get(7))?,
            expires_at: self.time(T, "expires_at", row.get(8))?,
            revoke,
        })
    }
}

const ORPHAN_COLUMNS: &str = "id, channel_id, group_name, key_id, epoch, intent_id, recorded_by, \
                              recorded_at, expires_at, revoked_at, revoke_outcome, revoke_detail";

/// `text` cut to [`DETAIL_MAX`] bytes at a character boundary.
fn cut(text: &str) -> String {
    let mut end = text.len().min(DETAIL_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// `channel`'s row (if any) and the database's now, in one statement.
async fn read_lease<C: GenericClient>(
    client: &C,
    pool: &PgPool,
    channel: &ChannelId,
) -> Result<(Option<Lease>, DateTime<Utc>), PgError> {
    let sql = format!(
        "SELECT t.now, l.holder, l.epoch, l.valid_until
           FROM (SELECT {NOW_MS} AS now) t
           LEFT JOIN channel_leases l ON l.channel_id = $1"
    );
    let row = client
        .query_one(&sql, &[&channel.as_str()])
        .await
        .map_err(pool.query_error("reading a channel's lease"))?;
    let db_now = pool.time("channel_leases", "now", row.get(0))?;
    let lease = match row.get::<_, Option<String>>(1) {
        Some(holder) => Some(pool.lease_of(holder, row.get(2), row.get(3))?),
        None => None,
    };
    Ok((lease, db_now))
}

/// The fence: run it first in every write transaction for `channel`
/// (docs/design.md §14.1). It locks `me`'s grant row of `epoch` `FOR
/// SHARE` and judges it by [`lease::check`] at the database's now, read
/// after the lock was granted; so until `tx` ends, no acquire can take the
/// channel over (its update waits for the lock), and the next leader reads
/// everything `tx` committed. `target` names the server in messages
/// ([`PgPool::target`]).
///
/// # Errors
///
/// [`PgError::Fenced`] naming the channel, `me`, `epoch` and whose the
/// lease is instead: roll `tx` back (dropping it does) and step down.
/// [`PgError::Query`] or [`PgError::BadRow`] when the statement fails:
/// the write must not go on either.
pub async fn fence<C: GenericClient>(
    tx: &C,
    pool: &PgPool,
    channel: &ChannelId,
    me: &InstanceId,
    epoch: Epoch,
) -> Result<(), PgError> {
    // The lock is taken in the materialized CTE; the clock is read in the
    // outer projection, after the CTE has returned (its lock granted), so
    // a fence that waited is judged at the instant it got the row, not
    // the instant it asked. The LEFT JOIN answers one row either way.
    let sql = format!(
        "WITH l AS MATERIALIZED (
             SELECT valid_until FROM channel_leases
              WHERE channel_id = $1 AND holder = $2 AND epoch = $3
                FOR SHARE)
         SELECT l.valid_until, {NOW_MS} FROM (SELECT 1) AS one LEFT JOIN l ON true"
    );
    let row = tx
        .query_one(&sql, &[&channel.as_str(), &me.as_str(), &epoch.0])
        .await
        .map_err(pool.query_error("checking a channel's lease (the fence)"))?;
    let db_now = pool.time("channel_leases", "now", row.get(1))?;
    let locked = match row.get::<_, Option<i64>>(0) {
        Some(valid_until) => Some(Lease {
            holder: me.clone(),
            epoch,
            valid_until: pool.time("channel_leases", "valid_until", valid_until)?,
        }),
        None => None,
    };
    let verdict = match &locked {
        Some(lease) => lease::check(Some(lease), me, epoch, db_now),
        // Not our grant: read whose it is (a plain read; nothing to lock).
        None => {
            let (row, _) = read_lease(tx, pool, channel).await?;
            match lease::check(row.as_ref(), me, epoch, db_now) {
                Err(why) => Err(why),
                // The locked read found no such grant, and a (holder,
                // epoch) is never granted twice: only another instance
                // under our ID explains it. The write must not go on.
                Ok(()) => {
                    return Err(PgError::LeaseConflict {
                        target: pool.target().to_owned(),
                        what: "fence",
                        channel: channel.clone(),
                        holder: me.clone(),
                        epoch,
                    });
                }
            }
        }
    };
    verdict.map_err(|why| PgError::Fenced {
        channel: channel.clone(),
        holder: me.clone(),
        epoch,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_plus_any_ttl_stays_inside_a_bigint() {
        // For any ttl and any instant chrono holds, the sum the statement
        // computes before clamping cannot overflow.
        for ttl in [Duration::MAX, Duration::MIN, Duration::zero()] {
            assert!(max_ms().checked_add(ttl_ms(ttl)).is_some(), "{ttl:?}");
            assert!(min_ms().checked_add(ttl_ms(ttl)).is_some(), "{ttl:?}");
        }
        assert_eq!(ttl_ms(Duration::seconds(30)), 30_000);
    }

    #[test]
    fn a_revoke_detail_is_cut_at_a_character_boundary() {
        let long = "é".repeat(DETAIL_MAX);
        let cut = cut(&long);
        assert!(cut.len() <= DETAIL_MAX);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(super::cut("short"), "short");
    }
}
