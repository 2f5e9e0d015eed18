//! The rotation policy: a pure function from (now, one group's tokens, its
//! channel's counts, the rules) to a [`Plan`] — what to issue, what to
//! revoke, what to verify or reconcile, when to look again, and what to
//! alert on. This is where docs/design.md sections 3, 4 and 5 become code.
//!
//! Purity is the point. The policy depends on `crate::domain`, chrono and
//! std only: no IO, no clock reads (every function takes `now`), no
//! randomness (full-jitter backoff takes its random number as an argument),
//! no config (it gets its own [`Rules`]). The rotator is the one place where a
//! plan meets IO; `cargo test policy` needs nothing else.
//!
//! # Files
//!
//! - [`rules`]: [`Rules`], the tunables, with docs/design.md's defaults.
//! - [`view`]: [`GroupView`] and [`ChannelView`], what a plan is made from.
//! - [`plan`]: [`plan_group`] and the [`Plan`] it returns.
//! - [`channel`]: [`drive`], the one per-channel loop (execute a group's
//!   plan, free capacity, or idle until an instant) that the rotator, the
//!   forecast and the property tests all call.
//! - [`round`]: [`issue_round`], the lone issues of a channel decided
//!   together (and carried out one request at a time), how long such a
//!   decision holds, and [`assume_issued`], what a successful issue
//!   changes.
//! - [`capacity`]: the channel's room (invariant 3) and [`capacity_victims`].
//! - [`rate`]: the rolling-hour issue budget (invariant 4) and its two
//!   bounded exceptions (first-start burst, deadline rescue).
//! - [`backoff`](mod@backoff): retries after failures, [`RetryState`].
//! - [`jitter`]: the stable per-group offsets.
//! - [`lost`]: when an issue of unknown outcome may have left a token
//!   (`lost_token`), and which listed key IDs `[ha]` adopts as lost.
//! - [`skew`]: when the local clock is far enough from LINE's to alert
//!   (`clock_skew`, with hysteresis).
//! - `time`: saturating time arithmetic, so odd inputs never panic.
//! - [`words`]: `Display` for the policy's values, for whatever a person
//!   reads (logs, `status`, the demo); never their `Debug` names.
//!
//! Tests: each file has its unit tests; `table_tests` walks every lifecycle
//! case with concrete times, and `world_tests` drives a channel through
//! random time, failures and foreign tokens with proptest, checking
//! invariants 1 to 4 after every step.

pub mod backoff;
pub mod capacity;
pub mod channel;
pub mod jitter;
pub mod lost;
pub mod plan;
pub mod rate;
pub mod round;
pub mod rules;
pub mod skew;
mod time;
pub mod view;
pub mod words;

#[cfg(test)]
mod table_tests;
#[cfg(test)]
mod world_tests;

pub use backoff::{Failed, FailureKind, RetryState, StepKind, backoff};
pub use capacity::{capacity_victims, free_capacity, live_ours};
pub use channel::{ChannelState, Decision, Next, drive, full_until, listing_deadline};
pub use jitter::{JitterPurpose, stable_jitter};
pub use lost::{Unheld, UnknownOutcome, lost_tokens};
pub use plan::{
    Alert, EVICTION_ALERT_SPAN, Hold, IssueReason, MAX_SLEEP, Plan, RevokeReason, Severity, Step,
    deadline, plan_group, rotation_due_at, token_verify_due_at, verify_due_at,
};
pub use rate::{BudgetInput, Urgency, issue_allowed_at, next_issue_allowed_at};
pub use round::{assume_issued, issue_round, round_holds_until};
pub use rules::{RetryRules, Rules, RulesError};
pub use skew::clock_skew_fires;
pub use view::{ChannelView, GroupView};
pub use words::{Joined, joined};
