//! High availability: the pure rules by which several linetokd instances
//! sharing one database lead each channel one at a time (docs/design.md
//! §14, "HA: leases and fencing").
//!
//! A channel is led by the holder of its lease: a database row with the
//! holder's [`InstanceId`], an [`Epoch`] (the fencing token) and a
//! `valid_until` in the **database's** time. Only the leader calls LINE for
//! the channel and writes its rows, and every write checks the lease
//! first. Nothing here reads a clock: the rules take the database's `now`
//! (from the statement that read or wrote the row) and readings of the
//! host's monotonic clock ([`Mono`]) as arguments, so host clocks set ten
//! minutes wrong change nothing, and the property tests drive them through
//! skewed clocks, pauses and lost answers.
//!
//! # Files
//!
//! - [`lease`]: the row and the database's side: [`lease::acquire`] (when
//!   absent or expired, epoch + 1), [`lease::renew`] (the holder, its
//!   epoch, while valid), [`lease::release`], and [`lease::check`], the
//!   fence every write transaction runs first.
//! - [`local`]: the holder's side: the local deadline measured from when
//!   the last renewal was sent, [`may_call_line`], [`may_write`], and the
//!   step-downs.
//! - [`orphan`]: tokens a lost grant may leave: never published
//!   ([`orphan::after_issue`]), older epochs' intents possibly issued
//!   ([`orphan::classify_intent`], [`orphan::may_settle`]), unknown key IDs
//!   adopted as lost, not foreign ([`orphan::classify_unknown_kid`]).
//!   These are the model the property tests (`world_tests`) check; the
//!   daemon carries them out in SQL and IO code rather than by calling
//!   them: `Rotator::orphan` (after a fenced store),
//!   `Store::close_intents_of_older_epochs` and `Store::settleable_through`
//!   (older epochs' intents), `policy::Unheld` (lost, not
//!   foreign: in alerts, `status` and the channel-token metric).
//! - [`spread`]: which channels an instance tries to lead (rendezvous
//!   hashing) and what it does about each lease ([`spread::lease_action`]).
//!
//! # Invariants
//!
//! 1. At any database instant at most one grant of a channel is valid, and
//!    each grant's epoch is one above the grant before it.
//! 2. A write for a channel commits only under the grant that is valid at
//!    the database's `now`, with that grant's holder and epoch.
//! 3. An instance calls LINE for a channel only while its grant has more
//!    than the request timeout plus [`local::CALL_MARGIN`] left, measured
//!    on its monotonic clock from when its last renewal was sent; so a call
//!    it starts is over before the database can grant the channel to
//!    another instance, and two instances never call LINE for one channel
//!    at overlapping instants, unless the process was stopped or starved
//!    during the call (its deadline then reads an answer that arrived,
//!    `line::deadline`): that call is the paused one of invariant 5.
//! 4. A step-down (renewal refused or unanswered, time running out, a
//!    write fenced) is final for the epoch: leading again takes a new
//!    grant, under a new epoch.
//! 5. A token whose store fails the fence is never published; an older
//!    epoch's open intent counts as possibly issued until a listing after
//!    its assertion's expiry settles it; an unknown key ID that such an
//!    intent may have made is ours and lost, never foreign.
//!
//! Their SQL on PostgreSQL is `store::pg::lease`, tested against these
//! functions; the daemon uses them through `leader` (the keeper and the
//! rotator's gate, docs/design.md §14.6).
//!
//! Pure; depends on `domain`, `policy::jitter`'s stable hash and chrono.

pub mod lease;
pub mod local;
pub mod orphan;
pub mod spread;

#[cfg(test)]
mod world_tests;

pub use lease::{Epoch, InstanceId, Lease, NotHeld};
pub use local::{
    AcquireAnswer, CALL_MARGIN, Held, Mono, RenewAnswer, Standing, StepDown, may_call_line,
    may_write,
};
pub use orphan::{IntentClass, IssuedFate, PossiblyIssued, UnknownKid};
pub use spread::LeaseAction;
