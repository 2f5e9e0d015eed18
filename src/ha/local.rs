//! The holder's side: what an instance may do for a channel, judged by its
//! own monotonic clock from the database's answers.
//!
//! A renewal's answer says "valid until `valid_until`, and it is `db_now`
//! here". The instance turns that into a local deadline measured from the
//! instant it **sent** the renewal: `sent_at + (valid_until − db_now)`.
//! The database ran the statement after it was sent, so in real time the
//! local deadline comes no later than the database's `valid_until`
//! (assuming the two clocks tick at the same rate; [`CALL_MARGIN`] covers
//! far more drift than real clocks have). No wall clock is compared with
//! another: neither the host's nor LINE's time matters, only the database's
//! for the grant and the host's monotonic clock for the time since sending.
//!
//! The rules:
//!
//! - [`Standing::after_renewal`] (and [`Standing::after_acquire`]): a
//!   renewal granted moves the deadline to the new `sent_at + grant`, even
//!   when that is earlier than the old one (the database's clock may have
//!   stepped back, and the row says what it says); the grant counted is
//!   never longer than the TTL asked for. A renewal refused, or failed
//!   (error, timeout, lost answer: its outcome is unknown), is a step-down.
//! - [`Standing::at`]: once the time left is [`CALL_MARGIN`] or less the
//!   instance steps down by itself.
//! - [`may_call_line`]: only while the time left exceeds the request
//!   timeout plus [`CALL_MARGIN`], so a call started now ends (or is given
//!   up) before the grant can pass to another instance, while the process
//!   runs (a stopped one's call may end later: `line::deadline`).
//! - [`may_write`]: only while leading with more than [`CALL_MARGIN`]
//!   left; the database's fence check ([`super::lease::check`]) is the
//!   judge, this spares it hopeless transactions.
//! - A step-down is final for the epoch: the instance forgets it, stops
//!   calling LINE and writing for the channel, and leads again only by a
//!   new grant (after the old one expired), under a new epoch.
//!
//! The monotonic clock must keep counting while the machine is suspended
//! (Linux's `CLOCK_BOOTTIME`, not `CLOCK_MONOTONIC`, which std's and
//! tokio's `Instant` use): a clock that stops would make a resumed leader
//! believe its grant still runs. A process stopped by `SIGSTOP` is fine:
//! both clocks run on.
//!
//! Pure; depends on [`super::lease`] and chrono.

use chrono::{DateTime, Duration, Utc};

use super::lease::{Epoch, Lease, NotHeld};

/// The least time left a leader keeps for itself beyond a LINE call:
/// below it, no call starts and no write is tried, and at it the instance
/// steps down. It absorbs the rate difference between the host's and the
/// database's clocks (2 s on a 30 s lease is 7 %; real clocks differ by
/// parts per million) and the time between a deadline check and the act.
pub const CALL_MARGIN: Duration = Duration::seconds(2);

/// A reading of the host's monotonic clock (milliseconds from an origin of
/// the caller's choosing, fixed for the process). Only differences of two
/// readings mean anything; it is never compared with the database's time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mono(i64);

impl Mono {
    /// The reading `ms` milliseconds after the caller's origin.
    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    /// Milliseconds after the origin.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// `self + d`, saturating.
    pub fn plus(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(d.num_milliseconds()))
    }

    /// `self − earlier`, saturating.
    pub fn since(self, earlier: Mono) -> Duration {
        Duration::milliseconds(self.0.saturating_sub(earlier.0))
    }
}

/// A grant this instance holds, as it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// The grant's fencing token.
    pub epoch: Epoch,
    /// When the grant (or its last renewal) was sent.
    pub sent_at: Mono,
    /// The local instant the grant may end: `sent_at` plus what the
    /// database granted, at most the TTL asked for.
    pub deadline: Mono,
}

impl Held {
    /// The time left at `local_now` (negative once past the deadline).
    pub fn time_left(&self, local_now: Mono) -> Duration {
        self.deadline.since(local_now)
    }

    /// When the next renewal is due: `renew` after the last one was sent.
    pub fn renewal_due_at(&self, renew: Duration) -> Mono {
        self.sent_at.plus(renew)
    }
}

/// What an instance is for one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// It does not hold the lease: it serves from the store, calls LINE
    /// for nothing and writes nothing for the channel.
    Follower,
    /// It holds the lease.
    Leader(Held),
}

/// The database's answer to an acquire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireAnswer {
    /// Granted: the new row and the database's `now` when it was written.
    Granted {
        /// The database's `now` in the statement.
        db_now: DateTime<Utc>,
        /// The row as written.
        lease: Lease,
    },
    /// Another grant stands.
    Held(Lease),
    /// No answer (error, timeout, connection lost): the row may or may not
    /// have been written. If it was, the grant expires unused and the next
    /// acquire raises the epoch past it.
    Failed,
}

/// The database's answer to a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewAnswer {
    /// Extended.
    Renewed {
        /// The database's `now` in the statement.
        db_now: DateTime<Utc>,
        /// The row's new `valid_until`.
        valid_until: DateTime<Utc>,
    },
    /// Refused: the grant is not ours any more.
    Refused(NotHeld),
    /// No answer: the outcome is unknown.
    Failed,
}

/// Why an instance stopped leading a channel: for the log line and the
/// `linetokd_lease_renew_failures_total`/`linetokd_fenced_writes_total`
/// metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepDown {
    /// A renewal was refused.
    Refused(NotHeld),
    /// A renewal got no answer.
    RenewFailed,
    /// The time left fell to [`CALL_MARGIN`] without a renewal.
    Expiring,
    /// A write's fence check failed; the write was rolled back.
    Fenced(NotHeld),
    /// The instance handed the channel over ([`super::lease::release`]).
    Released,
}

/// The local deadline of a grant sent at `sent_at`: `sent_at + (valid_until
/// − db_now)`, the grant clamped to `0..=ttl` (a row that claims more than
/// was asked for is not believed).
pub fn deadline(
    sent_at: Mono,
    db_now: DateTime<Utc>,
    valid_until: DateTime<Utc>,
    ttl: Duration,
) -> Mono {
    let granted = valid_until
        .signed_duration_since(db_now)
        .clamp(Duration::zero(), ttl.max(Duration::zero()));
    sent_at.plus(granted)
}

impl Standing {
    /// The standing after an acquire sent at `sent_at` for `ttl` was
    /// answered. Only a grant makes a leader; a follower stays one
    /// otherwise. A leader does not acquire, so its standing is kept.
    pub fn after_acquire(self, sent_at: Mono, answer: &AcquireAnswer, ttl: Duration) -> Standing {
        match (self, answer) {
            (Standing::Follower, AcquireAnswer::Granted { db_now, lease }) => {
                Standing::Leader(Held {
                    epoch: lease.epoch,
                    sent_at,
                    deadline: deadline(sent_at, *db_now, lease.valid_until, ttl),
                })
            }
            (standing, _) => standing,
        }
    }

    /// The standing after a renewal of `epoch` sent at `sent_at` was
    /// answered, and the step-down it causes, if any. An answer for another
    /// epoch than the one held (a late answer from before a step-down) is
    /// ignored.
    pub fn after_renewal(
        self,
        epoch: Epoch,
        sent_at: Mono,
        answer: &RenewAnswer,
        ttl: Duration,
    ) -> (Standing, Option<StepDown>) {
        let Standing::Leader(held) = self else {
            return (self, None);
        };
        if held.epoch != epoch {
            return (self, None);
        }
        match answer {
            RenewAnswer::Renewed {
                db_now,
                valid_until,
            } => (
                Standing::Leader(Held {
                    epoch,
                    sent_at,
                    deadline: deadline(sent_at, *db_now, *valid_until, ttl),
                }),
                None,
            ),
            RenewAnswer::Refused(why) => (Standing::Follower, Some(StepDown::Refused(why.clone()))),
            RenewAnswer::Failed => (Standing::Follower, Some(StepDown::RenewFailed)),
        }
    }

    /// The standing at `local_now`: a leader whose time left is
    /// [`CALL_MARGIN`] or less steps down.
    pub fn at(self, local_now: Mono) -> (Standing, Option<StepDown>) {
        match self {
            Standing::Leader(held) if held.time_left(local_now) <= CALL_MARGIN => {
                (Standing::Follower, Some(StepDown::Expiring))
            }
            other => (other, None),
        }
    }

    /// The grant held, if leading.
    pub fn held(&self) -> Option<&Held> {
        match self {
            Standing::Leader(held) => Some(held),
            Standing::Follower => None,
        }
    }
}

/// True only while leading with more time left (measured from the last
/// renewal's send) than `request_timeout` plus [`CALL_MARGIN`]: a LINE call
/// started now is over before the grant can pass to another instance.
pub fn may_call_line(standing: &Standing, local_now: Mono, request_timeout: Duration) -> bool {
    let needed = request_timeout
        .max(Duration::zero())
        .checked_add(&CALL_MARGIN)
        .unwrap_or(Duration::MAX);
    standing
        .held()
        .is_some_and(|held| held.time_left(local_now) > needed)
}

/// True only while leading with more than [`CALL_MARGIN`] left. The
/// database's fence check still decides; this spares it transactions that
/// would fail.
pub fn may_write(standing: &Standing, local_now: Mono) -> bool {
    standing
        .held()
        .is_some_and(|held| held.time_left(local_now) > CALL_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::lease::InstanceId;

    fn db(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    fn ms(v: i64) -> Mono {
        Mono::from_millis(v)
    }

    const TTL: Duration = Duration::seconds(30);
    const TIMEOUT: Duration = Duration::seconds(10);

    fn leader(sent_at: i64, deadline: i64) -> Standing {
        Standing::Leader(Held {
            epoch: Epoch(3),
            sent_at: ms(sent_at),
            deadline: ms(deadline),
        })
    }

    #[test]
    fn the_deadline_counts_from_the_send_never_longer_than_the_ttl() {
        // (sent_at ms, db_now s, valid_until s, expected deadline ms)
        for (sent, now, until, expected) in [
            (1_000, 100, 130, 31_000),
            // The database's clock is ten minutes off: nothing changes.
            (1_000, 700, 730, 31_000),
            // A row claiming more than asked for is cut to the TTL.
            (1_000, 100, 400, 31_000),
            // A grant already over gives no time at all.
            (1_000, 100, 90, 1_000),
            (1_000, 100, 112, 13_000),
        ] {
            assert_eq!(
                deadline(ms(sent), db(now), db(until), TTL),
                ms(expected),
                "sent {sent} ms, db now {now} s, valid until {until} s"
            );
        }
    }

    #[test]
    fn a_slow_answer_shortens_the_grant_by_its_own_delay() {
        // Sent at 0, answered 8 s later: the deadline is still 30 s after
        // the send, so only 22 s are left when the answer arrives.
        let s = Standing::Follower.after_acquire(
            ms(0),
            &AcquireAnswer::Granted {
                db_now: db(4),
                lease: Lease {
                    holder: InstanceId::new("a"),
                    epoch: Epoch(1),
                    valid_until: db(34),
                },
            },
            TTL,
        );
        assert_eq!(
            s.held().unwrap().time_left(ms(8_000)),
            Duration::seconds(22)
        );
    }

    #[test]
    fn may_call_line_only_with_more_than_the_timeout_and_margin_left() {
        // (standing, local now ms, expected)
        for (standing, now, expected) in [
            (leader(0, 30_000), 0, true),
            (leader(0, 30_000), 17_999, true),
            // Exactly timeout + margin left is not enough.
            (leader(0, 30_000), 18_000, false),
            (leader(0, 30_000), 25_000, false),
            (leader(0, 30_000), 40_000, false),
            (Standing::Follower, 0, false),
        ] {
            assert!(!may_call_line(&standing, ms(now), Duration::MAX));
            assert_eq!(
                may_call_line(&standing, ms(now), TIMEOUT),
                expected,
                "{standing:?} at {now}"
            );
        }
    }

    #[test]
    fn may_write_only_with_more_than_the_margin_left() {
        for (standing, now, expected) in [
            (leader(0, 30_000), 27_999, true),
            (leader(0, 30_000), 28_000, false),
            (Standing::Follower, 0, false),
        ] {
            assert_eq!(may_write(&standing, ms(now)), expected, "at {now}");
        }
    }

    #[test]
    fn step_downs() {
        let held = leader(0, 30_000);
        let renewed = RenewAnswer::Renewed {
            db_now: db(10),
            valid_until: db(40),
        };
        // (answer, epoch answered, expected standing, expected step-down)
        let cases = [
            (renewed.clone(), 3, leader(10_000, 40_000), None),
            // A late answer for an older epoch changes nothing.
            (RenewAnswer::Failed, 2, held, None),
            (renewed, 2, held, None),
            (
                RenewAnswer::Refused(NotHeld::OtherEpoch { epoch: Epoch(4) }),
                3,
                Standing::Follower,
                Some(StepDown::Refused(NotHeld::OtherEpoch { epoch: Epoch(4) })),
            ),
            (
                RenewAnswer::Failed,
                3,
                Standing::Follower,
                Some(StepDown::RenewFailed),
            ),
        ];
        for (answer, epoch, standing, step) in cases {
            assert_eq!(
                held.after_renewal(Epoch(epoch), ms(10_000), &answer, TTL),
                (standing, step),
                "{answer:?} for epoch {epoch}"
            );
        }
        // A follower ignores renewal answers and a leader acquire answers.
        assert_eq!(
            Standing::Follower.after_renewal(Epoch(3), ms(0), &RenewAnswer::Failed, TTL),
            (Standing::Follower, None)
        );
        assert_eq!(held.after_acquire(ms(5), &AcquireAnswer::Failed, TTL), held);
        // The margin: at 28 s of 30 the leader steps down by itself.
        assert_eq!(held.at(ms(27_999)), (held, None));
        assert_eq!(
            held.at(ms(28_000)),
            (Standing::Follower, Some(StepDown::Expiring))
        );
    }

    #[test]
    fn a_renewal_may_shorten_the_deadline() {
        // The database's clock stepped back: the row now ends sooner than
        // the previous renewal promised, and the deadline follows the row.
        let held = leader(0, 30_000);
        let (s, _) = held.after_renewal(
            Epoch(3),
            ms(10_000),
            &RenewAnswer::Renewed {
                db_now: db(10),
                valid_until: db(25),
            },
            TTL,
        );
        assert_eq!(s.held().unwrap().deadline, ms(25_000));
        assert_eq!(
            s.held().unwrap().renewal_due_at(Duration::seconds(10)),
            ms(20_000)
        );
    }
}
