//! The lease row and the database's side of the rules: acquire, renew,
//! release and the fence check, each judged by the database's clock.
//!
//! One row per channel says who may write for it: the holder (an
//! [`InstanceId`]), the [`Epoch`] (the fencing token, raised by every
//! grant) and `valid_until`. These functions are what the store's SQL must
//! do, written as pure functions of the row and the database's `now` so
//! they can be table-tested, driven by the property tests, and used as the
//! in-memory lease store of a simulation. The SQL the store runs (docs/design.md
//! §14) must give the same answers:
//!
//! - a lease is **valid** at `now` iff `now < valid_until`, and
//!   **expired** iff `valid_until <= now`: never both, so a takeover can
//!   only begin where the old grant ended;
//! - [`acquire`]: only when the row is absent (epoch 1) or expired (its
//!   epoch + 1), for `now + ttl`;
//! - [`renew`]: only by the holder, with its epoch, while the lease is
//!   still valid (`AND valid_until > now()`, stricter than a plain holder
//!   check: a lapsed lease is never revived, so each epoch is one
//!   unbroken interval of validity);
//! - [`release`]: the holder ends its own grant at `now` (a handover); the
//!   next acquire raises the epoch as after any expiry;
//! - [`check`]: the fence every write transaction runs first.
//!
//! Invariants (checked by the table tests here and the property tests in
//! `world_tests`): at any database instant at most one lease is valid per
//! channel; every grant's epoch is exactly one above the one before it;
//! the validity intervals of successive epochs are disjoint and ordered by
//! epoch; a write fenced with an epoch that is not the row's, or after
//! `valid_until`, never passes.
//!
//! Pure; depends on `domain`-style newtypes of its own and chrono.

use std::fmt;

use chrono::{DateTime, Duration, Utc};

/// The name an instance holds leases under (`[ha] instance_id`, by default
/// `hostname:pid`). Unique among the instances sharing a database; a
/// restarted instance may reuse it (its old grants have expired or are
/// fenced by their epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(String);

impl InstanceId {
    /// Wraps the raw string.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The fencing token: raised by one on every grant of a channel's lease.
/// Intents, writes and orphans carry the epoch they were made under, so a
/// newer leader can tell its own from its predecessors'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch(pub i64);

impl Epoch {
    /// The epoch of a channel's first grant.
    pub const FIRST: Epoch = Epoch(1);

    /// The epoch after this one (saturating: a row at `i64::MAX` keeps
    /// it, and then no grant can be told from the one before; 2^63 grants
    /// do not happen).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One channel's lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Who may write for the channel and call LINE for it.
    pub holder: InstanceId,
    /// The grant's fencing token.
    pub epoch: Epoch,
    /// The database instant the grant ends (exclusive).
    pub valid_until: DateTime<Utc>,
}

impl Lease {
    /// True while the grant stands: `db_now < valid_until`.
    pub fn is_valid_at(&self, db_now: DateTime<Utc>) -> bool {
        db_now < self.valid_until
    }

    /// True when `me` holds this grant with `epoch` and it stands at
    /// `db_now`.
    pub fn is_held_by(&self, me: &InstanceId, epoch: Epoch, db_now: DateTime<Utc>) -> bool {
        check(Some(self), me, epoch, db_now).is_ok()
    }
}

/// Why a lease is not the caller's: the answer of a refused renewal, a
/// failed fence check or a refused release. Each one means "step down".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotHeld {
    /// The channel has no lease row.
    NoLease,
    /// Another instance holds the lease (valid or not).
    OtherHolder {
        /// Who.
        holder: InstanceId,
        /// Under which epoch.
        epoch: Epoch,
    },
    /// The caller holds the row, but under another epoch: it lost the
    /// lease and took it again since, so the caller's grant is over.
    OtherEpoch {
        /// The row's epoch.
        epoch: Epoch,
    },
    /// The caller's grant ended at `valid_until`, not after the database's
    /// `now`.
    Lapsed {
        /// When it ended.
        valid_until: DateTime<Utc>,
    },
}

impl fmt::Display for NotHeld {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoLease => f.write_str("the channel has no lease"),
            Self::OtherHolder { holder, epoch } => {
                write!(f, "instance {holder} holds the lease (epoch {epoch})")
            }
            Self::OtherEpoch { epoch } => {
                write!(f, "the lease has moved on to epoch {epoch}")
            }
            Self::Lapsed { valid_until } => write!(
                f,
                "the lease lapsed at {}",
                valid_until.format("%Y-%m-%dT%H:%M:%S%.3fZ")
            ),
        }
    }
}

/// `t + d`, clamped to chrono's range, so an absurd TTL gives an absurd
/// instant instead of a panic.
fn plus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(if d < Duration::zero() {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// The fence check: `me` holds `row` with `epoch` and it is valid at
/// `db_now`. Every write transaction for the channel runs it first (in SQL
/// with `FOR SHARE`, so a takeover waits for the write to commit); an
/// `Err` means roll back and step down.
///
/// # Errors
///
/// [`NotHeld`] saying whose the lease is instead.
pub fn check(
    row: Option<&Lease>,
    me: &InstanceId,
    epoch: Epoch,
    db_now: DateTime<Utc>,
) -> Result<(), NotHeld> {
    let Some(row) = row else {
        return Err(NotHeld::NoLease);
    };
    if row.holder != *me {
        return Err(NotHeld::OtherHolder {
            holder: row.holder.clone(),
            epoch: row.epoch,
        });
    }
    if row.epoch != epoch {
        return Err(NotHeld::OtherEpoch { epoch: row.epoch });
    }
    if !row.is_valid_at(db_now) {
        return Err(NotHeld::Lapsed {
            valid_until: row.valid_until,
        });
    }
    Ok(())
}

/// Takes the lease for `me` when the row is absent (epoch 1) or expired
/// at `db_now` (its epoch + 1), valid for `ttl`. A row still valid at
/// `db_now` stands, even when `me` holds it: a holder extends its grant by
/// [`renew`], and one that stepped down waits for the expiry like anyone,
/// so a new grant always has a new epoch.
///
/// # Errors
///
/// The valid lease that stands.
pub fn acquire(
    row: Option<&Lease>,
    me: &InstanceId,
    db_now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Lease, Lease> {
    let epoch = match row {
        None => Epoch::FIRST,
        Some(row) if row.is_valid_at(db_now) => return Err(row.clone()),
        Some(row) => row.epoch.next(),
    };
    Ok(Lease {
        holder: me.clone(),
        epoch,
        valid_until: plus(db_now, ttl),
    })
}

/// Extends `me`'s grant of `epoch` to `db_now + ttl`, only while it is
/// still valid. The new `valid_until` may be earlier than the old one when
/// the database's clock stepped back; it is what the row says, and the
/// holder's local deadline follows it (see `super::local`).
///
/// # Errors
///
/// [`NotHeld`] when the grant is not `me`'s any more: step down.
pub fn renew(
    row: Option<&Lease>,
    me: &InstanceId,
    epoch: Epoch,
    db_now: DateTime<Utc>,
    ttl: Duration,
) -> Result<Lease, NotHeld> {
    check(row, me, epoch, db_now)?;
    Ok(Lease {
        holder: me.clone(),
        epoch,
        valid_until: plus(db_now, ttl),
    })
}

/// Ends `me`'s grant of `epoch` at `db_now` (a handover to the instance
/// the channel is spread to). The row keeps its epoch, so whoever acquires
/// next raises it. Release only between steps, with no LINE call in flight:
/// then nothing of the old epoch can still reach LINE.
///
/// # Errors
///
/// [`NotHeld`] when the grant was not `me`'s any more.
pub fn release(
    row: Option<&Lease>,
    me: &InstanceId,
    epoch: Epoch,
    db_now: DateTime<Utc>,
) -> Result<Lease, NotHeld> {
    check(row, me, epoch, db_now)?;
    Ok(Lease {
        holder: me.clone(),
        epoch,
        valid_until: db_now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn lease(holder: &str, epoch: i64, until: i64) -> Lease {
        Lease {
            holder: InstanceId::new(holder),
            epoch: Epoch(epoch),
            valid_until: at(until),
        }
    }

    const TTL: Duration = Duration::seconds(30);

    type Case = (Option<Lease>, i64, i64, Result<(), NotHeld>);

    #[test]
    fn acquire_only_when_absent_or_expired_with_the_next_epoch() {
        let a = InstanceId::new("a");
        // (row, now, expected epoch or the standing lease's holder)
        let cases: [(Option<Lease>, i64, Result<i64, &str>); 7] = [
            (None, 0, Ok(1)),
            (Some(lease("b", 4, 10)), 9, Err("b")),
            // valid_until is exclusive: at it the lease has expired.
            (Some(lease("b", 4, 10)), 10, Ok(5)),
            (Some(lease("b", 4, 10)), 500, Ok(5)),
            // Its own valid lease is not acquired again (renew extends it).
            (Some(lease("a", 4, 10)), 5, Err("a")),
            // Its own expired lease: a new grant, a new epoch.
            (Some(lease("a", 4, 10)), 11, Ok(5)),
            (Some(lease("b", i64::MAX, 0)), 1, Ok(i64::MAX)),
        ];
        for (row, now, expected) in cases {
            let got = acquire(row.as_ref(), &a, at(now), TTL);
            match (got, expected) {
                (Ok(l), Ok(epoch)) => {
                    assert_eq!(l.epoch, Epoch(epoch), "{row:?} at {now}");
                    assert_eq!(l.holder, a);
                    assert_eq!(l.valid_until, at(now + 30));
                }
                (Err(standing), Err(holder)) => {
                    assert_eq!(standing.holder.as_str(), holder, "{row:?} at {now}");
                    assert_eq!(Some(standing), row);
                }
                (got, expected) => panic!("{row:?} at {now}: {got:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn the_fence_and_renewal_pass_only_for_the_holder_with_its_epoch_while_valid() {
        let a = InstanceId::new("a");
        // (row, caller's epoch, now, expected)
        let cases: [Case; 6] = [
            (Some(lease("a", 3, 10)), 3, 9, Ok(())),
            (None, 3, 9, Err(NotHeld::NoLease)),
            (
                Some(lease("b", 4, 40)),
                3,
                9,
                Err(NotHeld::OtherHolder {
                    holder: InstanceId::new("b"),
                    epoch: Epoch(4),
                }),
            ),
            (
                Some(lease("a", 5, 40)),
                3,
                9,
                Err(NotHeld::OtherEpoch { epoch: Epoch(5) }),
            ),
            (
                Some(lease("a", 3, 10)),
                3,
                10,
                Err(NotHeld::Lapsed {
                    valid_until: at(10),
                }),
            ),
            // An older epoch in the row than the caller's is also not its.
            (
                Some(lease("a", 2, 40)),
                3,
                9,
                Err(NotHeld::OtherEpoch { epoch: Epoch(2) }),
            ),
        ];
        for (row, epoch, now, expected) in cases {
            assert_eq!(
                check(row.as_ref(), &a, Epoch(epoch), at(now)),
                expected,
                "{row:?} epoch {epoch} at {now}"
            );
            let renewed = renew(row.as_ref(), &a, Epoch(epoch), at(now), TTL);
            match expected {
                Ok(()) => assert_eq!(renewed, Ok(lease("a", epoch, now + 30))),
                Err(e) => assert_eq!(renewed, Err(e)),
            }
        }
    }

    #[test]
    fn a_renewal_follows_the_database_clock_even_backwards() {
        let a = InstanceId::new("a");
        // The database clock stepped back 20 s: the grant ends earlier.
        let row = lease("a", 1, 100);
        let renewed = renew(Some(&row), &a, Epoch(1), at(50), TTL).unwrap();
        assert_eq!(renewed.valid_until, at(80));
    }

    #[test]
    fn a_release_ends_the_grant_now_and_the_next_acquire_raises_the_epoch() {
        let a = InstanceId::new("a");
        let b = InstanceId::new("b");
        let row = lease("a", 7, 100);
        let released = release(Some(&row), &a, Epoch(7), at(50)).unwrap();
        assert!(!released.is_valid_at(at(50)));
        assert_eq!(
            release(Some(&row), &b, Epoch(7), at(50)),
            Err(NotHeld::OtherHolder {
                holder: a.clone(),
                epoch: Epoch(7)
            })
        );
        let taken = acquire(Some(&released), &b, at(50), TTL).unwrap();
        assert_eq!(taken.epoch, Epoch(8));
        assert!(check(Some(&taken), &a, Epoch(7), at(50)).is_err());
    }

    #[test]
    fn absurd_ttls_do_not_panic() {
        let a = InstanceId::new("a");
        let l = acquire(None, &a, DateTime::<Utc>::MAX_UTC, Duration::MAX).unwrap();
        assert_eq!(l.valid_until, DateTime::<Utc>::MAX_UTC);
        let l = acquire(None, &a, at(0), Duration::seconds(-5)).unwrap();
        assert!(!l.is_valid_at(at(0)));
    }

    #[test]
    fn why_a_lease_is_not_held_reads_as_a_sentence() {
        let e = NotHeld::OtherHolder {
            holder: InstanceId::new("web-2:41"),
            epoch: Epoch(9),
        };
        assert_eq!(e.to_string(), "instance web-2:41 holds the lease (epoch 9)");
        assert_eq!(
            NotHeld::Lapsed { valid_until: at(0) }.to_string(),
            "the lease lapsed at 2023-11-14T22:13:20.000Z"
        );
    }
}
