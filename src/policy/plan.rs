//! The decision: from one group's tokens, its channel and the rules, at one
//! instant, to a [`Plan`] (docs/design.md sections 4 and 5).
//!
//! [`plan_group`] is a pure function. It never reads a clock, never draws a
//! random number and never does IO, so every lifecycle case is a table test
//! and the invariants are property tests (see the `table_tests` and
//! `world_tests` modules).
//!
//! # How the rotator uses a plan
//!
//! - Execute the steps in order. Each step assumes the ones before it
//!   succeeded, so stop at the first failure (record it with
//!   [`RetryState::after_failure`](super::RetryState::after_failure)) or at
//!   any surprise (a verify or reconcile that finds one of our tokens dead:
//!   mark it gone). After a plan whose steps all ran, drop the retry state.
//! - Then plan again with fresh views. A plan with steps always has
//!   `wake_at == now` (the state changed, look again at once); planning
//!   converges to a plan without steps within a few rounds, whose `wake_at`
//!   says when to look next.
//! - `Issue` is the whole of docs/design.md 4.2d: record the attempt (it counts
//!   against `max_issues_per_hour` whatever the outcome), issue, verify,
//!   store, publish.
//! - `Reconcile` is channel-wide and shows up in the plan of every group
//!   that needs it; rebuild the [`ChannelView`] between groups (also for the
//!   issue times and live counts) and later groups will not repeat it.
//! - When a plan holds for capacity, pick victims with
//!   [`capacity_victims`](super::capacity_victims), revoke them, and plan
//!   again; if there are none, the plan's alert stands and the group is
//!   looked at again at `wake_at`.
//!
//! # Invariants this module guarantees (docs/design.md section 3)
//!
//! - Invariant 1: an `Issue` is only planned when, after the plan's own
//!   revokes, the group has at most one live token: never a third.
//! - Invariant 3: an `Issue` is only planned when the channel has room after
//!   the plan's own revokes, never in the same plan as a `Reconcile` (whose
//!   result could change the count), and only when the last reconcile is at
//!   most `reconcile_max_age_before_issue` old with no unsettled attempts.
//! - Invariant 4: an `Issue` is only planned when the channel's attempts in
//!   the last hour are below `max_issues_per_hour`, or as one of the
//!   budget's two bounded exceptions (the first-start burst and the
//!   deadline rescue, see [`rate`](super::rate)), so no rolling hour holds
//!   more than twice the budget plus one attempt per group; and never
//!   before a retry's time.
//! - Invariant 2 (a current token with time left) is what the timing buys:
//!   rotation is planned `rotate_before` plus the group's jitter ahead of
//!   expiry, and a critical alert is raised as soon as the arithmetic shows
//!   a successor cannot come in time.
//!
//! Depends on `crate::domain`, chrono and the sibling modules.

use chrono::{DateTime, Duration, Utc};

use super::backoff::{FailureKind, StepKind};
use super::capacity::free_capacity;
use super::jitter::{JitterPurpose, stable_jitter};
use super::rate::{BudgetInput, ISSUE_WINDOW, Urgency, issue_allowed_at};
use super::rules::Rules;
use super::time;
use super::view::{ChannelView, GroupView};
use crate::domain::{KeyId, RequestKind, TokenKind, TokenRecord};

/// The longest a plan may sleep by default ([`Rules::max_sleep`]): even
/// with nothing due, plan again within the hour. Every due time is
/// wall-clock arithmetic; if the clock jumps, the machine suspends, or a bug
/// computes a wake time too far ahead, this caps the damage at an hour of
/// delay for the price of one cheap pure call. The cap falls on whole
/// hours ([`time::safety_wake`]), so all channels take it in one pass.
pub const MAX_SLEEP: Duration = Duration::hours(1);

/// How long [`Alert::ShortLivedEvicted`] keeps firing after an eviction was
/// found: long enough to reach people although the group's replacement is
/// issued at once (an alert that resolved within seconds would never be
/// sent), short enough to end once the other issuer stops.
pub const EVICTION_ALERT_SPAN: Duration = Duration::hours(1);

/// The shortest interval between two verifications or reconciles, whatever
/// the settings say: a zero interval would make the step due again the
/// instant it ran.
const MIN_INTERVAL: Duration = Duration::seconds(1);

/// What to do for one group, and when to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The requests to make now, in order.
    pub steps: Vec<Step>,
    /// When to plan again: `now` if there are steps (plan again right after
    /// them), otherwise the earliest instant anything could change, and never
    /// later than `now + MAX_SLEEP`.
    pub wake_at: DateTime<Utc>,
    /// When to plan again were `steps` empty: the earliest instant anything
    /// could change for the group (a token's expiry, a retry, a due time),
    /// never later than `now + MAX_SLEEP`. Equal to `wake_at` when there
    /// are no steps. The driver wakes by it when it takes steps out of a
    /// plan (a held listing, a 429 pause), so that a token expiring during
    /// the hold is still noticed (and alerted on) when it expires.
    pub idle_until: DateTime<Utc>,
    /// The earliest a new token could be issued, if nothing else changes:
    /// the rotation time pushed back by whatever holds it (retry, rate,
    /// a live older token). `None` for a removed group. For status and
    /// metrics (`linetokd_next_rotation_timestamp_seconds`).
    pub next_rotation_at: Option<DateTime<Utc>>,
    /// Why an issue the group needs is not in `steps`, if it is not.
    pub hold: Option<Hold>,
    /// Conditions an operator should hear about. They describe the state at
    /// `now` (level, not edge): the caller de-duplicates repeats.
    pub alerts: Vec<Alert>,
}

/// One request to LINE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// List the channel's live key IDs (`/oauth2/v2.1/tokens/kid`): mark our
    /// missing tokens gone, count foreign ones, settle lost attempts.
    Reconcile,
    /// Revoke one of this group's live tokens (needs the channel secret).
    Revoke {
        /// The token.
        key_id: KeyId,
        /// Why, for the event log.
        reason: RevokeReason,
    },
    /// Check a token with LINE's verify of its kind (`/oauth2/v2.1/verify`,
    /// `/v2/oauth/verify`): a v2.1 group's current token, or any live
    /// short-lived token of ours. If LINE refuses a v2.1 token (revoked in
    /// the console, or by someone else) it is kept as refused (LINE may
    /// still count it); a refused short-lived token is gone (evicted or
    /// revoked). Either way plan again: a group left without a usable
    /// token is issued a new one at once.
    Verify {
        /// The token.
        key_id: KeyId,
    },
    /// Issue a new token for the group, verify it, store it, publish it.
    Issue {
        /// Why, for the event log.
        reason: IssueReason,
        /// The `token_exp` to ask for: the rules' `token_lifetime`.
        token_exp: Duration,
        /// The operator requests this issue carries out: closed in the
        /// transaction that stores the new token.
        closes: Vec<i64>,
    },
    /// Close operator requests that need no issue (an incident or rotation
    /// asked for a group that left the config, once its tokens are gone).
    CloseRequests {
        /// The requests.
        ids: Vec<i64>,
    },
}

impl Step {
    /// The step's kind: its name as the store keeps it with a failure
    /// streak (`groups.failed_step`) and as logs show it, and what a
    /// streak that failed at it holds ([`RetryState::holds`]).
    pub fn kind(&self) -> StepKind {
        match self {
            Self::Reconcile => StepKind::Reconcile,
            Self::Revoke { .. } => StepKind::Revoke,
            Self::Verify { .. } => StepKind::Verify,
            Self::Issue { .. } => StepKind::Issue,
            Self::CloseRequests { .. } => StepKind::CloseRequests,
        }
    }
}

/// Why a token is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IssueReason {
    /// The group has no live token (new group, expired, gone, revoked).
    NoCurrent,
    /// The current token is within `rotate_before` plus jitter of expiry.
    Due,
    /// An operator asked (`linetokd rotate`).
    Requested,
    /// An operator declared an incident (`linetokd revoke`).
    Incident,
}

/// Why a token is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RevokeReason {
    /// An operator declared an incident: every token issued before it goes.
    Incident,
    /// A third (or later) live token, e.g. after a crash: the oldest go.
    Excess,
    /// The previous token has been superseded for `revoke_previous_after`.
    Superseded,
    /// Rotation is due and the group already has two live tokens: the older
    /// goes so the new one is not a third.
    MakeRoom,
    /// The group left the config and its `removal_grace` is over.
    Removed,
    /// LINE's verify refused it, or an incident condemned it and could not
    /// revoke it then (LINE refused the secret), and LINE may still count
    /// it: revoke it so the slot is certainly free and, if leaked, dead.
    Refused,
    /// Another group of the channel needs the room
    /// ([`capacity_victims`](super::capacity_victims)).
    FreeCapacity,
}

/// Why an issue the group needs waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The last attempt failed; the next may start at `until`.
    Retry {
        /// The retry's time.
        until: DateTime<Utc>,
    },
    /// Two tokens are live and there is no channel secret to revoke the
    /// older: wait until it expires.
    OlderTokenLive {
        /// When the group is down to one live token.
        until: DateTime<Utc>,
    },
    /// The channel's hourly issue budget is spent, and the group may not go
    /// over it now (it is not at risk, or its over-budget attempts are
    /// spent: see [`rate`](super::rate)).
    RateLimit {
        /// When the group may attempt again: the rolling window has room,
        /// or an over-budget attempt is allowed.
        until: DateTime<Utc>,
    },
    /// The plan reconciles first; the issue comes in the next plan, on
    /// fresh counts.
    Reconcile,
    /// An issue on the channel whose outcome is unknown (a takeover's:
    /// the previous leader's request) may still reach LINE until `until`;
    /// only a key-ID listing from then on can settle it, and until then
    /// the group issues nothing: it may be the attempt's own group, or a
    /// listing asked for after LINE's 30-token refusal would settle
    /// nothing before then.
    Settling {
        /// When a listing can settle it (the assertion's expiry plus LINE's
        /// clock allowance).
        until: DateTime<Utc>,
    },
    /// The channel is full. Free `needed` tokens elsewhere
    /// ([`capacity_victims`](super::capacity_victims)) and plan again.
    Capacity {
        /// How many tokens must go before one can be issued.
        needed: u32,
    },
    /// LINE answered another group's issue on the channel 429 (too many
    /// requests) and this group can wait without losing its token: it
    /// issues nothing before `until`, the other group's retry
    /// ([`drive`](super::drive)).
    LinePaused {
        /// When the other group may try again.
        until: DateTime<Utc>,
    },
}

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Something needs attention, consumers still work.
    Warning,
    /// Consumers are about to lose (or have lost) their token.
    Critical,
}

/// A condition worth telling an operator about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// The group has no live token and is failing, or is held by something
    /// slower than one reconcile. Consumers are without a token now.
    NoLiveToken {
        /// When a new token could be issued, if that is known.
        next_attempt_at: Option<DateTime<Utc>>,
    },
    /// Deadline arithmetic: the current token expires before the earliest
    /// instant a successor can be issued.
    ExpiresBeforeSuccessor {
        /// The current token.
        key_id: KeyId,
        /// Its expiry.
        expires_at: DateTime<Utc>,
        /// The earliest next attempt.
        next_attempt_at: DateTime<Utc>,
    },
    /// Rotation is held because the channel is full.
    NoCapacity {
        /// How many tokens must go before one can be issued.
        needed: u32,
    },
    /// Rotation is held by the channel's hourly issue budget.
    RateLimited {
        /// When the budget has room again.
        until: DateTime<Utc>,
    },
    /// LINE refuses this group's requests in a way only a change of config
    /// or console can fix; retrying slowly.
    PermanentFailure {
        /// Consecutive failures.
        failures: u32,
        /// The next attempt.
        retry_at: DateTime<Utc>,
    },
    /// The group has more than two live tokens and no secret to revoke the
    /// extras (invariant 1 is broken until they expire).
    TooManyLive {
        /// How many are live.
        live: usize,
    },
    /// Listing the channel's key IDs keeps failing (channel-wide); issues
    /// wait for a fresh listing.
    ReconcileFailing {
        /// Consecutive failures.
        failures: u32,
        /// The next attempt.
        retry_at: DateTime<Utc>,
    },
    /// LINE refused an issue because the channel holds 30 live tokens
    /// (channel-wide); the next attempt is at the next expiry LINE honours.
    ChannelFull {
        /// When LINE should have room again.
        until: DateTime<Utc>,
    },
    /// The lifecycle calls for revoking a token, but the channel has no
    /// secret configured; it will live until it expires.
    RevokeNeedsSecret {
        /// The token.
        key_id: KeyId,
        /// Why it should go.
        reason: RevokeReason,
    },
    /// Channel-wide: the room left once our own superseded tokens are
    /// revoked is at most `rules.capacity_low_threshold`, so a foreign
    /// issuer or a few more tokens will fill the channel.
    CapacityLow {
        /// Tokens the channel can still take after freeing what we can.
        free: i64,
        /// The threshold it is at or below.
        threshold: u32,
    },
    /// Channel-wide, one per key ID: the last listing showed a token that
    /// is not ours (another issuer's, or ours lost in a crash). It counts
    /// against the channel's 30 until it is gone.
    ForeignToken {
        /// Its key ID.
        key_id: KeyId,
    },
    /// LINE's verify refused a short-lived token of this group that still
    /// had time left, at `at`: evicted by a 31st short-lived (anyone's)
    /// token on the channel, or revoked outside linetokd. Fires for
    /// [`EVICTION_ALERT_SPAN`] after the latest such refusal.
    ShortLivedEvicted {
        /// When the latest eviction was found.
        at: DateTime<Utc>,
    },
    /// Issue attempts of this group ended without knowing whether LINE
    /// issued (a crash mid-call, a lost answer): a token of ours nobody
    /// can hand out may be live ([`lost`](super::lost)).
    LostToken {
        /// Such attempts that may still have a live token.
        attempts: u32,
        /// How many of them no key-ID listing has settled yet.
        unsettled: u32,
        /// When the earliest of them began.
        since: DateTime<Utc>,
        /// Key IDs listed since then that may be the lost token.
        candidates: Vec<KeyId>,
    },
}

impl Alert {
    /// How loud this alert is.
    pub fn severity(&self) -> Severity {
        match self {
            Self::NoLiveToken { .. } | Self::ExpiresBeforeSuccessor { .. } => Severity::Critical,
            Self::NoCapacity { .. }
            | Self::RateLimited { .. }
            | Self::PermanentFailure { .. }
            | Self::TooManyLive { .. }
            | Self::ReconcileFailing { .. }
            | Self::ChannelFull { .. }
            | Self::RevokeNeedsSecret { .. }
            | Self::CapacityLow { .. }
            | Self::ForeignToken { .. }
            | Self::ShortLivedEvicted { .. }
            | Self::LostToken { .. } => Severity::Warning,
        }
    }
}

/// The instant rotation of `token` is due for the group: its expiry minus
/// `rotate_before` minus the group's stable jitter.
pub fn rotation_due_at(token: &TokenRecord, group: &GroupView, rules: &Rules) -> DateTime<Utc> {
    let jitter = stable_jitter(
        &group.channel,
        &group.group,
        JitterPurpose::Rotation,
        rules.rotation_jitter,
    );
    time::sub(
        token.expires_at,
        time::sum(time::non_negative(rules.rotate_before), jitter),
    )
}

/// The instant the current token is due for verification: a
/// `verify_interval` after it was last verified (or issued), less the
/// group's stable verify jitter of up to `min(rotation_jitter,
/// verify_interval / 2)`.
pub fn verify_due_at(token: &TokenRecord, group: &GroupView, rules: &Rules) -> DateTime<Utc> {
    verify_due_after(group.last_verified_at, token, group, rules)
}

/// The instant a token other than the group's current one is due for
/// verification: a `verify_interval` after LINE last accepted it (or its
/// issue), less the group's verify jitter. Only short-lived tokens are
/// verified this way: nothing lists them, so a previous token evicted by
/// another issuer would otherwise go unnoticed.
pub fn token_verify_due_at(token: &TokenRecord, group: &GroupView, rules: &Rules) -> DateTime<Utc> {
    verify_due_after(token.verified_at, token, group, rules)
}

/// A `verify_interval` after `verified` (or the token's issue, whichever
/// is later), less the group's verify jitter.
fn verify_due_after(
    verified: Option<DateTime<Utc>>,
    token: &TokenRecord,
    group: &GroupView,
    rules: &Rules,
) -> DateTime<Utc> {
    let interval = time::at_least(rules.verify_interval, MIN_INTERVAL);
    let span = time::non_negative(rules.rotation_jitter).min(interval / 2);
    let jitter = stable_jitter(&group.channel, &group.group, JitterPurpose::Verify, span);
    let since = verified.map_or(token.issued_at, |v| v.max(token.issued_at));
    time::sub(time::add(since, interval), jitter)
}

/// The instant a failing group's next attempt must come by: its current
/// token's expiry less the safety margin (`deadline_margin`, at most a
/// quarter of `rotate_before`). A group in the config with no usable token
/// is past any deadline: `now`, so its attempts, and its channel's key-ID
/// listing, come at most `retry.base` apart whatever the backoff or a
/// `Retry-After` says, as those of a group past its token's deadline do;
/// the hourly budget (and its rescue, a minute apart) still bounds the
/// issues. (Its deadline was once a minute ahead, so a group that lost its
/// token retried twelve times slower than just before: an outside test
/// saw groups wait up to two minutes more once LINE answered half the
/// time again.) A removed group has none. (The rotator leaves a permanent
/// failure of a group without a token at its slow pace: only a config
/// change or an operator fixes that, and both end the hold at once.)
pub fn deadline(now: DateTime<Utc>, group: &GroupView, rules: &Rules) -> Option<DateTime<Utc>> {
    if group.removed_at.is_some() {
        return None;
    }
    let margin = deadline_margin(rules);
    Some(
        group
            .current(now)
            .map_or(now, |t| time::sub(t.expires_at, margin)),
    )
}

/// How long before a token's expiry its group's deadline falls
/// (`deadline_margin`, at most a quarter of `rotate_before`).
fn deadline_margin(rules: &Rules) -> Duration {
    time::non_negative(rules.deadline_margin).min(time::non_negative(rules.rotate_before) / 4)
}

/// When a group that waits for room on a full channel, its last token
/// expiring at `expires`, lists the key IDs next, the channel last listed
/// at `listed_at`: halfway between that listing and the expiry (at least
/// [`MIN_INTERVAL`] after it), but not before the deadline (`window`
/// before the expiry); `None` once no look fits before the expiry.
///
/// Why: other issuers' tokens expire at instants nobody tells us, so room
/// they leave is seen only by a listing. At the usual cadence the last
/// listing before the expiry could be minutes old, and room that appeared
/// since was used only after the group's token had run out (an outside
/// test saw three groups go 272–278 ms without a token while LINE had
/// room). Halving the wait keeps the cost to about log2(window / 1 s)
/// listings per expiring token, and bounds how late such room is seen to
/// a second before the expiry or half the time left, whichever is more.
/// Counting from the channel's last listing, whoever asked for it, lets
/// groups whose tokens expire close together share their looks: counted
/// from each deadline, fourteen groups issued milliseconds apart listed
/// ten times in 43 ms at their deadlines (found by an outside test).
fn closing_look(
    listed_at: DateTime<Utc>,
    expires: DateTime<Utc>,
    window: Duration,
) -> Option<DateTime<Utc>> {
    let halfway = time::add(listed_at, ((expires - listed_at) / 2).max(MIN_INTERVAL));
    let at = halfway.max(time::sub(expires, window));
    (at < expires).then_some(at)
}

/// Collects a plan's pieces while the rules are walked.
struct Draft {
    now: DateTime<Utc>,
    /// [`time::safety_wake`]: the latest a plan without steps wakes.
    latest: DateTime<Utc>,
    wakes: Vec<DateTime<Utc>>,
    alerts: Vec<Alert>,
}

impl Draft {
    /// Something may change at `at`: wake then, if it is still ahead.
    fn wake(&mut self, at: DateTime<Utc>) {
        if at > self.now {
            self.wakes.push(at);
        }
    }

    /// When the plan would sleep until, were it to have no steps.
    fn earliest_wake(&self) -> DateTime<Utc> {
        self.wakes
            .iter()
            .copied()
            .min()
            .map_or(self.latest, |w| w.min(self.latest))
    }

    fn finish(
        self,
        steps: Vec<Step>,
        hold: Option<Hold>,
        next_rotation_at: Option<DateTime<Utc>>,
    ) -> Plan {
        let idle_until = self.earliest_wake();
        let wake_at = if steps.is_empty() {
            idle_until
        } else {
            self.now
        };
        Plan {
            steps,
            wake_at,
            idle_until,
            next_rotation_at,
            hold,
            alerts: self.alerts,
        }
    }
}

/// Decides what to do for one group at `now`.
///
/// `group` holds the group's own tokens and requests; `channel` the counts
/// that concern every group of the channel (`live_ours` includes this
/// group's live tokens). See the module documentation for how to execute
/// the plan and what it guarantees.
pub fn plan_group(
    now: DateTime<Utc>,
    group: &GroupView,
    channel: &ChannelView,
    rules: &Rules,
) -> Plan {
    let mut draft = Draft {
        now,
        latest: time::safety_wake(now, rules.max_sleep),
        wakes: Vec::new(),
        alerts: Vec::new(),
    };
    let live = group.live_tokens(now);
    for t in &live {
        // An expiry changes who is current or previous, and frees capacity.
        draft.wake(t.expires_at);
    }
    let retry_until = group
        .retry
        .as_ref()
        .map(|r| r.not_before)
        .filter(|nb| *nb > now);
    if let Some(r) = &group.retry {
        draft.wake(r.not_before);
        if r.kind == FailureKind::Permanent {
            draft.alerts.push(Alert::PermanentFailure {
                failures: r.failures,
                retry_at: r.not_before.max(now),
            });
        }
    }
    if let Some(at) = group.evicted_at {
        let until = time::add(at, EVICTION_ALERT_SPAN);
        if now < until {
            draft.alerts.push(Alert::ShortLivedEvicted { at });
            draft.wake(until);
        }
    }
    let mut revokes = Revokes::default();
    match group.removed_at {
        Some(removed_at) => {
            plan_removed(&mut draft, &mut revokes, group, &live, removed_at, rules);
            // The streak holds what it speaks for (`RetryState::holds`),
            // as for an active group.
            let mut steps = Vec::new();
            if !group.held(StepKind::Revoke, now) {
                steps = revokes.into_steps();
                // A rotation means nothing for a group that left; an
                // incident is done once nothing of it is left to revoke.
                if !group.requests.is_empty()
                    && steps.is_empty()
                    && !group.held(StepKind::CloseRequests, now)
                {
                    steps.push(Step::CloseRequests {
                        ids: group.request_ids(),
                    });
                }
            }
            draft.finish(steps, None, None)
        }
        None => plan_active(draft, revokes, group, channel, rules, &live, retry_until),
    }
}

/// The revocations a plan has decided on, in order.
#[derive(Default)]
struct Revokes(Vec<(KeyId, RevokeReason)>);

impl Revokes {
    fn contains(&self, key: &KeyId) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Plans the revocation of `token` if the group can revoke, or alerts.
    fn want(
        &mut self,
        draft: &mut Draft,
        group: &GroupView,
        token: &TokenRecord,
        reason: RevokeReason,
    ) {
        if self.contains(&token.key_id) {
            return;
        }
        if group.revokes() {
            self.0.push((token.key_id.clone(), reason));
        } else {
            draft.alerts.push(Alert::RevokeNeedsSecret {
                key_id: token.key_id.clone(),
                reason,
            });
        }
    }

    fn count(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX)
    }

    fn into_steps(self) -> Vec<Step> {
        self.0
            .into_iter()
            .map(|(key_id, reason)| Step::Revoke { key_id, reason })
            .collect()
    }
}

/// A removed group: no issue, no verify; revoke everything once the grace is
/// over (or at once for tokens an incident condemned).
fn plan_removed(
    draft: &mut Draft,
    revokes: &mut Revokes,
    group: &GroupView,
    live: &[&TokenRecord],
    removed_at: DateTime<Utc>,
    rules: &Rules,
) {
    let grace_over_at = time::add(removed_at, time::non_negative(rules.removal_grace));
    draft.wake(grace_over_at);
    for t in live.iter().rev() {
        if draft.now >= grace_over_at {
            revokes.want(draft, group, t, RevokeReason::Removed);
        } else if group.request(RequestKind::Incident).is_some() {
            revokes.want(draft, group, t, RevokeReason::Incident);
        }
    }
}

fn plan_active(
    mut draft: Draft,
    mut revokes: Revokes,
    group: &GroupView,
    channel: &ChannelView,
    rules: &Rules,
    live: &[&TokenRecord],
    retry_until: Option<DateTime<Utc>>,
) -> Plan {
    let now = draft.now;
    let current = live.first().copied().filter(|t| t.refused_at.is_none());
    let incident = group.request(RequestKind::Incident).is_some();
    // A streak holds only the steps it speaks for (`RetryState::holds`):
    // a verify's 429 or a revoke refused for good leaves the issue alone.
    let issue_retry_until = retry_until.filter(|_| group.held(StepKind::Issue, now));

    // Revocations that stand whether or not a token is issued now. Oldest
    // first, so a failure part-way leaves the newest tokens in place. An
    // open incident condemns every live token: the issue that carries the
    // incident out closes it in the transaction that stores its token, so
    // while it is open no live token is the incident's own.
    if incident {
        for t in live.iter().rev() {
            revokes.want(&mut draft, group, t, RevokeReason::Incident);
        }
    }
    for t in live.iter().rev().filter(|t| t.refused_at.is_some()) {
        revokes.want(&mut draft, group, t, RevokeReason::Refused);
    }
    if live.len() > 2 {
        if !group.revokes() {
            draft.alerts.push(Alert::TooManyLive { live: live.len() });
        }
        for t in live[2..].iter().rev() {
            revokes.want(&mut draft, group, t, RevokeReason::Excess);
        }
    }
    if let (Some(cur), Some(prev), Some(after)) =
        (current, live.get(1), rules.revoke_previous_after)
    {
        let revoke_at = time::add(cur.issued_at, time::non_negative(after));
        if now >= revoke_at {
            revokes.want(&mut draft, group, prev, RevokeReason::Superseded);
        } else {
            draft.wake(revoke_at);
        }
    }
    // What the group is left with once those revocations succeed.
    let remaining: Vec<&TokenRecord> = live
        .iter()
        .copied()
        .filter(|t| !revokes.contains(&t.key_id))
        .collect();

    // Does the group need a new token, and from when?
    let due_at = current.map(|c| rotation_due_at(c, group, rules));
    let usable_left = remaining.iter().any(|t| t.refused_at.is_none());
    let reason = if incident {
        Some(IssueReason::Incident)
    } else if !usable_left {
        Some(IssueReason::NoCurrent)
    } else if group.request(RequestKind::Rotate).is_some() {
        Some(IssueReason::Requested)
    } else if due_at.is_some_and(|d| now >= d) {
        Some(IssueReason::Due)
    } else {
        None
    };
    if let Some(d) = due_at {
        draft.wake(d);
    }

    // Time gates on issuing. The new token must not be a third live one:
    // with the secret, the older of two goes first (planned below, only if
    // the issue happens now); without it, wait for all but one to expire.
    // With the secret every refused token is already being revoked, so
    // `remaining` is usable tokens, newest first.
    let make_room: Vec<&TokenRecord> = if group.revokes() {
        remaining.iter().skip(1).copied().collect()
    } else {
        Vec::new()
    };
    let room_at = if group.revokes() || remaining.len() < 2 {
        now
    } else {
        let mut expiries: Vec<DateTime<Utc>> = remaining.iter().map(|t| t.expires_at).collect();
        expiries.sort();
        expiries[expiries.len() - 2]
    };
    // The hourly budget (invariant 4) and its two bounded exceptions
    // (`rate` has the rule and the bound): the first-start burst, so 15
    // new groups are all live after one pass, not two hours; and the
    // deadline rescue, so failed attempts spending the budget cannot hold
    // a group past its token's expiry while LINE answers.
    let urgency = match (usable_left, deadline(now, group, rules)) {
        (true, d) => Urgency::Until {
            deadline: d.unwrap_or(DateTime::<Utc>::MAX_UTC),
        },
        (false, _) => Urgency::NoToken {
            first_in_hour: reason == Some(IssueReason::NoCurrent) && group.issued_last_hour == 0,
        },
    };
    let mut rate_at = issue_allowed_at(
        now,
        &BudgetInput {
            channel_attempts: &channel.issues_last_hour,
            max_per_hour: rules.max_issues_per_hour,
            urgency,
            group_last_attempt: group.last_issue_at,
        },
    );
    // A group without a token that waits for the budget is due a
    // first-start burst again once its latest attempt is an hour old: it
    // then has no attempt in the hour. Without this it would sleep until
    // the budget or the rescue's ceiling opened, which may be later.
    if let (Urgency::NoToken { .. }, Some(IssueReason::NoCurrent), Some(last)) =
        (urgency, reason, group.last_issue_at)
    {
        rate_at = rate_at.min(time::add(last, ISSUE_WINDOW).max(now));
    }
    let wanted_from = if reason.is_some() {
        now
    } else {
        due_at.unwrap_or(now)
    };
    let earliest = [
        Some(wanted_from),
        issue_retry_until,
        Some(room_at),
        Some(rate_at),
    ]
    .into_iter()
    .flatten()
    .fold(now, DateTime::max);
    let reconcile_due_at = channel
        .last_reconcile_at
        .map(|at| listing_due_at(at, rules));
    // Only v2.1 tokens are listed: a short-lived group never waits for (or
    // asks for) a listing, and its pool has no foreign or lost tokens.
    let listed = group.kind.is_listed();
    // A group switched to short-lived keeps its v2.1 tokens until they
    // expire. LINE lists those, and the listing is also what sees other
    // issuers' v2.1 tokens on the channel, so it goes on while one is live.
    let lists = listed
        || group
            .live(now)
            .any(|t| t.kind() == crate::domain::TokenKind::V21);
    let reconcile_is_due = lists && reconcile_due_at.is_none_or(|at| now >= at);
    // After LINE's 30-token refusal our count was wrong: only a listing
    // asked for after the refusal is fresh.
    let full_until = channel.full_until.filter(|u| *u > now);
    // A takeover's possibly-issued attempts settle only by a listing asked
    // for after their assertion expired (docs/design.md §14.3): until then
    // a listing is no use to them.
    let lost_settle_from = channel
        .held_assertion_exp
        .map(|exp| time::add(exp, time::non_negative(rules.line_clock_allowance)))
        .filter(|at| *at > now);
    // Unsettled attempts make the count uncertain, so a listing settles them
    // before any issue. While a takeover's attempt cannot be settled yet
    // (and with it none after it), the unsettled attempts are counted
    // against capacity and hold only their own groups (each may already
    // hold a token nobody recorded), not the whole channel.
    let lost_blocks =
        channel.lost > 0 && (lost_settle_from.is_none() || group.unsettled_attempts > 0);
    // A failing listing does not stop an issue the group needs: the last
    // listing's count stands, with our own issues and revocations since,
    // and LINE refuses a 31st token itself (the full-channel rule, §5.3,
    // takes it from there). Without this a listing endpoint answering 429
    // or 500 alone held every due rotation of the channel until its tokens
    // ran out (outside test). Only while the listing waits for its retry:
    // at the retry it goes first again, so that issues in a row cannot
    // starve it. Not for attempts that may have issued (only a listing
    // settles them), and not on a channel never listed.
    //
    // After LINE's 30-token refusal the last listing's count is known to
    // be wrong, so while the refusal's hold lasts (`full_until`) the count
    // is LINE's own at the refusal: full. One of our superseded tokens
    // revoked frees exactly the slot an issue needs (a revocation ends the
    // hold), and the hold ends at the earliest expiry of ours or after
    // `full_recheck`. Then the issue goes on the last listing's count and
    // LINE's answer is the check: a second refusal holds the channel again.
    // (Waiting for a listing instead, as before, left every group of the
    // channel without a token for as long as the listing failed, while
    // LINE had room: found by an outside test.)
    let listing_failing = listed
        && channel
            .reconcile_retry
            .as_ref()
            .is_some_and(|r| r.not_before > now)
        && channel.last_reconcile_at.is_some()
        && !lost_blocks;
    // The count is the refusal's rather than a listing's.
    let counted_at_refusal = listing_failing && channel.relist_needed;
    let reconcile_fresh_for_issue = !listed
        || listing_failing
        || (!reconcile_is_due
            && !lost_blocks
            && !channel.relist_needed
            && channel
                .last_reconcile_at
                .is_some_and(|at| now <= listing_fresh_until(at, rules)));

    let mut hold = None;
    let mut room = Revokes::default();
    let mut reconcile = reconcile_is_due;
    let mut issue = None;
    // A capacity hold's next look before its regular one (`closing_look`):
    // a wake-up, but not what the deadline alert judges by (below).
    let mut closing = None;
    if let Some(reason) = reason {
        if let Some(until) = issue_retry_until {
            hold = Some(Hold::Retry { until });
            // An attempt that may have issued is settled by a listing,
            // which need not wait for the retry: asked for now, it shows
            // whether LINE issued, and when it did not, the rotator ends
            // the "may have issued" pace (`RetryState::settled_nothing`).
            // (Waiting for the retry's minute left a group without a token
            // for 49 s while LINE answered: an outside test.)
            if listed && group.unsettled_attempts > 0 && lost_settle_from.is_none() {
                reconcile = true;
            }
        } else if room_at > now {
            hold = Some(Hold::OlderTokenLive { until: room_at });
            draft.wake(room_at);
        } else if rate_at > now {
            hold = Some(Hold::RateLimit { until: rate_at });
            draft.alerts.push(Alert::RateLimited { until: rate_at });
            draft.wake(rate_at);
        } else if !reconcile_fresh_for_issue {
            // A group holding an attempt no listing can settle yet waits
            // for the instant one can (once the channel has been listed at
            // all), and so does a re-listing after LINE's 30-token refusal:
            // a listing settles nothing past a held attempt, so asking
            // sooner would only ask again and again. Anything else is
            // settled by a listing now.
            match lost_settle_from {
                Some(at)
                    if (lost_blocks || channel.relist_needed)
                        && channel.last_reconcile_at.is_some() =>
                {
                    hold = Some(Hold::Settling { until: at });
                    draft.wake(at);
                }
                _ => {
                    hold = Some(Hold::Reconcile);
                    reconcile = true;
                }
            }
        } else {
            let freed = revokes
                .count()
                .saturating_add(u32::try_from(make_room.len()).unwrap_or(u32::MAX));
            let mut free = free_capacity(channel, rules, freed);
            if let (Some(until), true) = (full_until, counted_at_refusal) {
                // LINE said the channel is full, and no listing has counted
                // it since: LINE's count then stands (above), with only
                // what this plan revokes freed.
                free = i64::from(freed);
                draft.wake(until);
            } else if let Some(until) = full_until {
                // LINE said the channel is full, and a listing asked for
                // after that refusal has counted the channel again (no
                // issue comes before one: `relist_needed`). That count is
                // LINE's word, newer than the refusal: room it shows was
                // freed since (a foreign token expired) and is used at
                // once. Only our tokens that expired after the listing may
                // still be counted by LINE until `until`. (Trusting only
                // our own revocations until then, as before, left a group
                // past its deadline while LINE had room: found by an
                // outside test.)
                free -= i64::from(channel.expired_since_listing);
                draft.wake(until);
            }
            if free < 1 {
                let needed = u32::try_from(1 - free).unwrap_or(u32::MAX);
                hold = Some(Hold::Capacity { needed });
                draft.alerts.push(Alert::NoCapacity { needed });
                // Foreign and unsettled tokens expire at instants nobody
                // tells us, so the key IDs are listed again: every
                // `full_recheck` while consumers have no token at all,
                // every `reconcile_max_age_before_issue` for a rotation.
                // The first slot LINE frees is then used within that, not
                // at the next hourly reconcile. A takeover's held attempt
                // alone frees nothing before a listing can settle it.
                // Under the refusal's count with the listing failing, the
                // hold's end (woken above) is the next chance: no listing
                // can be asked for before its retry, which the driver wakes
                // for. (Looks here showed in `status` as a next look at
                // which nothing happened: an outside test.)
                if counted_at_refusal {
                } else if let (0, Some(at)) = (channel.foreign, lost_settle_from) {
                    draft.wake(at);
                } else if channel.foreign > 0 || channel.lost > 0 {
                    let every = if usable_left {
                        rules.reconcile_max_age_before_issue
                    } else {
                        rules.full_recheck
                    };
                    let cadence = channel
                        .last_reconcile_at
                        .map_or(now, |at| time::add(at, time::at_least(every, MIN_INTERVAL)));
                    // While the group still has a token, looks in between
                    // tighten as it nears its expiry (`closing_look`).
                    let last_expiry = remaining
                        .iter()
                        .filter(|t| t.refused_at.is_none())
                        .map(|t| t.expires_at)
                        .max();
                    closing = channel
                        .last_reconcile_at
                        .zip(last_expiry)
                        .and_then(|(at, e)| closing_look(at, e, deadline_margin(rules)))
                        .filter(|look| *look < cadence);
                    if now >= closing.unwrap_or(cadence) {
                        reconcile = true;
                        closing = None;
                    } else {
                        draft.wake(cadence);
                    }
                }
            } else {
                // Only now, with the issue certain to be planned, does the
                // older token go: revoking it without a successor would only
                // cut off consumers that have not switched yet.
                for t in &make_room {
                    room.want(&mut draft, group, t, RevokeReason::MakeRoom);
                }
                issue = Some(reason);
            }
        }
    }
    if let Some(at) = reconcile_due_at.filter(|_| lists) {
        draft.wake(at);
    }

    // Verify the token consumers are using, unless it is being replaced now;
    // and every other live short-lived token on its own schedule, since
    // nothing lists them and an evicted previous token would otherwise go
    // unnoticed by the consumers that still use it.
    // A token a newer short-lived issue of ours may have evicted is due at
    // once ([`ChannelView::eviction_suspects`]).
    let suspect = |t: &TokenRecord| channel.eviction_suspects.contains(&t.key_id);
    let mut verify = Vec::new();
    if issue.is_none() {
        if let Some(cur) = remaining.first() {
            let at = verify_due_at(cur, group, rules);
            draft.wake(at);
            if now >= at || suspect(cur) {
                verify.push(cur.key_id.clone());
            }
        }
        for t in remaining
            .iter()
            .skip(1)
            .filter(|t| t.kind() == TokenKind::ShortLived && t.refused_at.is_none())
        {
            let at = token_verify_due_at(t, group, rules);
            draft.wake(at);
            if now >= at || suspect(t) {
                verify.push(t.key_id.clone());
            }
        }
    }

    // Deadline arithmetic (docs/design.md section 5): alert as soon as the
    // successor cannot come in time, not when the token has expired. Nothing
    // says when a full channel frees up, so a capacity hold is not given a
    // time; its only known next chance is the next look at the group. The
    // closing looks are a chance more, not a promise, so they wake the
    // group only after this: were they counted, a group whose token runs
    // out on a full channel would be critical only in its last second.
    let next_attempt_at = match hold {
        Some(Hold::Capacity { .. }) => None,
        Some(Hold::Settling { until }) => Some(until.max(earliest)),
        _ => Some(earliest),
    };
    match remaining.first() {
        None => {
            let held_long = hold.as_ref().is_some_and(|h| *h != Hold::Reconcile);
            if group.retry.is_some() || held_long {
                draft.alerts.push(Alert::NoLiveToken { next_attempt_at });
            }
        }
        Some(cur) if issue.is_none() => {
            let next = next_attempt_at.unwrap_or_else(|| draft.earliest_wake());
            if cur.expires_at <= next {
                draft.alerts.push(Alert::ExpiresBeforeSuccessor {
                    key_id: cur.key_id.clone(),
                    expires_at: cur.expires_at,
                    next_attempt_at: next,
                });
            }
        }
        Some(_) => {}
    }
    if let Some(at) = closing {
        draft.wake(at);
    }

    // The order: revocations that stand on their own (an incident's first),
    // then reading (reconcile, verify), then the make-room revocation and the
    // issue it exists for, last, so that any earlier failure stops the issue.
    // A retry's wait holds the steps its streak speaks for
    // (`RetryState::holds`): all of them, except after a verify's 429 (the
    // verifies only: the listing an issue may need first, the revocations
    // and the issue go on, and the new token is verified by the issue
    // itself) or a revoke refused for good (the revocations only, and the
    // group plans none: it plans as without the secret).
    let held = |step| group.held(step, now);
    let mut steps = Vec::new();
    if !held(StepKind::Revoke) {
        steps = revokes.into_steps();
    }
    // A listing waiting for its retry is not asked for now (the driver's
    // `hold_listing` says so for every step).
    if reconcile && !held(StepKind::Reconcile) && !(listing_failing && issue.is_some()) {
        steps.push(Step::Reconcile);
    }
    if !held(StepKind::Verify) {
        steps.extend(verify.into_iter().map(|key_id| Step::Verify { key_id }));
    }
    if !held(StepKind::Revoke) {
        steps.extend(room.into_steps());
    }
    // Planned only when the streak does not hold issues (`issue_retry_until`).
    if let Some(reason) = issue {
        steps.push(Step::Issue {
            reason,
            token_exp: rules.token_lifetime,
            closes: group.request_ids(),
        });
    }
    draft.finish(steps, hold, Some(earliest))
}

/// When a key-ID listing made at `at` is due again (`reconcile_interval`).
pub(super) fn listing_due_at(at: DateTime<Utc>, rules: &Rules) -> DateTime<Utc> {
    time::add(at, time::at_least(rules.reconcile_interval, MIN_INTERVAL))
}

/// The last instant a key-ID listing made at `at` is fresh enough to issue
/// on (`reconcile_max_age_before_issue`).
pub(super) fn listing_fresh_until(at: DateTime<Utc>, rules: &Rules) -> DateTime<Utc> {
    time::add(at, time::non_negative(rules.reconcile_max_age_before_issue))
}
