//! The forecast behind `linetokd plan`: the rotation policy run forward in
//! virtual time, assuming every call to LINE succeeds.
//!
//! [`forecast`] starts from the views the daemon would build now (one
//! [`GroupView`] per group, one [`ChannelView`] per channel) and does what
//! the rotator does, step for step, without IO: at each channel's due
//! instant it expires tokens whose time is up and asks the channel driver
//! ([`drive`]) what to do, carries it out (a group's plan, or freeing
//! capacity for a group held by a full channel) and drives again; when the
//! driver says idle, the channel is due again at that instant. Channels
//! come off a heap of due instants, so the work grows with each channel's
//! own rounds. What the rotator would have done is recorded as a timeline
//! of [`PlannedAction`]s. With [`Routine::Skip`] the routine reads are
//! left out (see there).
//!
//! How the steps are imagined to succeed:
//!
//! - `Issue`: LINE issues a token living exactly `token_exp`, given a
//!   synthetic key ID (`next-1`, `next-2`, ...) since the real one is only
//!   known once LINE answers; it is verified on the spot, as the rotator
//!   verifies each new token. The attempt counts against the hourly budget.
//! - `Revoke`: the token is revoked. `Verify`: it is still valid.
//! - `Reconcile`: LINE lists exactly what the store knows, so unsettled
//!   attempts settle to nothing and foreign tokens stay. A foreign token's
//!   expiry is unknown, so it is assumed to stay live for the whole
//!   forecast: the forecast errs on the side of a fuller channel.
//! - A failure streak the store recorded holds the group until its retry
//!   time, as it holds the daemon.
//!
//! - Operator requests (`linetokd rotate`, `linetokd revoke`) are in the
//!   store, so the views carry them and the first plan carries them out.
//!
//! This module is pure: it depends on `policy`, `domain` and chrono only,
//! reads no clock (`now` is an argument) and does no IO. Each channel's
//! rounds are bounded ([`MAX_ROUNDS_PER_CHANNEL`]); a forecast that hits
//! the bound says so ([`Summary::complete`]).
//!
//! Channels share nothing, so a large forecast runs on the threads the
//! caller allows, each over a run of the channels, and the parts are put
//! back in the order one thread would have made: rounds by instant, then
//! by channel, each round's actions as done. Only the synthetic key IDs
//! cross channels (`next-1`, `next-2`, ... in that order): each part
//! names its tokens with placeholders, renamed in that order once the
//! parts are merged, so the timeline is the same whatever the threads.
//!
//! The timeline is handed over a day of virtual time at a time
//! ([`forecast_each`]): the parts run to the end of the day, their actions
//! are merged and handed on, and only then does the next day run. Memory
//! holds the channels' state and one day's actions, never the whole
//! timeline, and the renaming forgets a token's name at its revocation or
//! expiry, its last mention.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::convert::Infallible;
use std::mem::Discriminant;
use std::panic::resume_unwind;
use std::thread;

use chrono::{DateTime, Duration, Utc};

use crate::domain::{ChannelId, GroupName, KeyId, SHORT_LIVED_PREFIX, TokenKind, TokenState};
use crate::policy::{
    self, Alert, ChannelState, ChannelView, GroupView, IssueReason, Next, RevokeReason, Rules,
    Step, assume_issued, drive,
};

/// The prefix of the key IDs given to tokens the forecast imagines issued.
pub const SYNTHETIC_KEY_PREFIX: &str = "next-";

/// True for a key ID the forecast gave a token it imagines issued
/// (`next-N`, or `sl:next-N` for a short-lived one).
pub fn is_synthetic(key_id: &KeyId) -> bool {
    let id = key_id.as_str();
    id.strip_prefix(SHORT_LIVED_PREFIX)
        .unwrap_or(id)
        .starts_with(SYNTHETIC_KEY_PREFIX)
}

/// The most rounds (instants at which anything happens) one channel runs
/// in one forecast. A year of a channel's hourly reconciles and fifteen
/// groups' verifies is about 30,000, and the demo's 30-second intervals over
/// 30 days with `--all` about 350,000; the bound only stops a runaway loop.
pub const MAX_ROUNDS_PER_CHANNEL: usize = 1_000_000;

/// Whether the routine reads (verify, reconcile) are run forward too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routine {
    /// Every verify and reconcile is simulated and recorded: exact counts,
    /// and a round every few hours per group and every hour per channel.
    Simulate,
    /// Only what changes the channel is simulated. Under "every call
    /// succeeds" a routine read changes nothing a later decision reads,
    /// with one exception: an issue needs a fresh listing, and the policy
    /// asks for that itself (`Hold::Reconcile`) at the instant of the
    /// issue. So the issues, revocations and expiries are the same as with
    /// [`Routine::Simulate`] (a test holds the two to that), at a cost
    /// that grows with the rotations rather than with the hours; the
    /// routine reads are not counted ([`Forecast::routine`] is `None`).
    Skip,
}

/// The verify and reconcile interval [`Routine::Skip`] plans with: beyond
/// any horizon, so no routine read is ever due on the clock.
const BEYOND_ANY_HORIZON: Duration = Duration::MAX;

/// The most plans one channel may carry out at one instant, as in the
/// rotator: every plan changes the state, so the next one differs.
const MAX_PLANS_PER_ROUND: usize = 64;

/// Fewer channels than this per thread are not worth a thread: a small
/// forecast takes milliseconds on one.
const MIN_CHANNELS_PER_THREAD: usize = 256;

/// Marks a placeholder key ID (a part's name for a token it imagines
/// issued, renamed once the parts are merged). A control character: no
/// key ID from LINE or the store contains one.
const PLACEHOLDER_MARK: char = '\u{1}';

/// What the policy is to plan for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct ChannelInput {
    /// The channel.
    pub channel: ChannelId,
    /// True when the daemon looks after this channel (it is in the
    /// config). A channel that left the config is never planned: its tokens
    /// only expire.
    pub managed: bool,
    /// Its groups, in the order the daemon plans them.
    pub groups: Vec<GroupView>,
    /// Its counts; `live_ours` is recounted from `groups` at every instant.
    pub view: ChannelView,
}

/// One thing the daemon is expected to do.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedAction {
    /// When.
    pub at: DateTime<Utc>,
    /// On which channel.
    pub channel: ChannelId,
    /// For which group (for a reconcile: the group whose plan asked for
    /// it; reconciling is channel-wide).
    pub group: GroupName,
    /// What.
    pub action: Action,
}

/// What the daemon is expected to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Issue a new token (docs/design.md 4.2d).
    Issue {
        /// A synthetic key ID ([`SYNTHETIC_KEY_PREFIX`]): LINE picks the
        /// real one.
        key_id: KeyId,
        /// Why.
        reason: IssueReason,
        /// When the new token will expire.
        expires_at: DateTime<Utc>,
    },
    /// Revoke a token.
    Revoke {
        /// The token: a stored one's key ID, or a synthetic one.
        key_id: KeyId,
        /// Why.
        reason: RevokeReason,
    },
    /// A token reaches its expiry.
    Expire {
        /// The token.
        key_id: KeyId,
    },
    /// Verify the current token with LINE.
    Verify {
        /// The token.
        key_id: KeyId,
    },
    /// List the channel's valid key IDs.
    Reconcile,
    /// An alert condition starts (the daemon logs each when it starts).
    Alert(Alert),
}

impl Action {
    /// True for the routine reads (verify, reconcile): many, and only noise
    /// in a timeline of what changes.
    pub fn is_routine(&self) -> bool {
        matches!(self, Self::Verify { .. } | Self::Reconcile)
    }
}

/// The timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Where it starts.
    pub from: DateTime<Utc>,
    /// Where it ends (inclusive).
    pub until: DateTime<Utc>,
    /// What happens, in time order (same-instant actions in the order the
    /// daemon would do them).
    pub actions: Vec<PlannedAction>,
    /// False when a channel reached [`MAX_ROUNDS_PER_CHANNEL`] before
    /// `until`: its timeline stops early.
    pub complete: bool,
    /// The routine reads simulated, as (verifies, reconciles); `None` with
    /// [`Routine::Skip`], which does not simulate them all.
    pub routine: Option<(usize, usize)>,
}

/// How much virtual time a forecast runs before it hands over what
/// happened in it: only one window's actions are held at once, so a
/// forecast of 100,000 groups over 400 days (millions of actions, more with
/// every verify and reconcile) streams out in bounded memory. A day holds
/// every group's verify and every channel's hourly listings, and keeps the
/// per-window cost (a thread per part, a sort) small against the window's
/// rounds.
const WINDOW: Duration = Duration::days(1);

/// What a forecast found besides its actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// False when a channel reached [`MAX_ROUNDS_PER_CHANNEL`] before
    /// `until`: its timeline stops early.
    pub complete: bool,
    /// The routine reads simulated, as (verifies, reconciles); `None` with
    /// [`Routine::Skip`], which does not simulate them all.
    pub routine: Option<(usize, usize)>,
}

/// Runs the policy forward from `now` to `until`, as the rotator would if
/// every call to LINE succeeded, on up to `threads` threads (the result
/// does not depend on how many), and collects the timeline. See the
/// module documentation. For a small forecast and for tests: `plan` uses
/// [`forecast_each`], which hands the actions over as they come instead of
/// holding them all.
pub fn forecast(
    now: DateTime<Utc>,
    channels: Vec<ChannelInput>,
    rules: &Rules,
    until: DateTime<Utc>,
    routine: Routine,
    threads: usize,
) -> Forecast {
    let mut actions = Vec::new();
    let Ok(summary) = forecast_each(now, channels, rules, until, routine, threads, |a| {
        actions.push(a);
        Ok::<(), Infallible>(())
    });
    Forecast {
        from: now,
        until,
        actions,
        complete: summary.complete,
        routine: summary.routine,
    }
}

/// [`forecast`], handing each action to `emit` in time order as soon as
/// its day ([`WINDOW`]) is done, so memory holds the channels' state and
/// one day's actions, never the whole timeline. Stops at `emit`'s first
/// error and returns it.
///
/// # Errors
/// The first error `emit` returns.
pub fn forecast_each<E>(
    now: DateTime<Utc>,
    channels: Vec<ChannelInput>,
    rules: &Rules,
    until: DateTime<Utc>,
    routine: Routine,
    threads: usize,
    emit: impl FnMut(PlannedAction) -> Result<(), E>,
) -> Result<Summary, E> {
    let parts = threads.min(channels.len() / MIN_CHANNELS_PER_THREAD).max(1);
    let cut = Cut {
        parts,
        window: WINDOW,
    };
    forecast_in(now, channels, rules, until, routine, cut, emit)
}

/// How a forecast is cut up: into `parts` runs of channels, each on a
/// thread of its own when there are two or more, and into windows of
/// virtual time. Neither changes the timeline (tests hold it to that).
#[derive(Debug, Clone, Copy)]
struct Cut {
    parts: usize,
    window: Duration,
}

/// [`forecast_each`] cut as `cut` says.
fn forecast_in<E>(
    now: DateTime<Utc>,
    channels: Vec<ChannelInput>,
    rules: &Rules,
    until: DateTime<Utc>,
    routine: Routine,
    cut: Cut,
    mut emit: impl FnMut(PlannedAction) -> Result<(), E>,
) -> Result<Summary, E> {
    let rules = match routine {
        Routine::Simulate => rules.clone(),
        Routine::Skip => Rules {
            verify_interval: BEYOND_ANY_HORIZON,
            reconcile_interval: BEYOND_ANY_HORIZON,
            ..rules.clone()
        },
    };
    // Virtual time neither jumps nor suspends: the hourly look the daemon
    // takes for safety would only be a round that finds nothing to do.
    let rules = Rules {
        max_sleep: BEYOND_ANY_HORIZON,
        ..rules
    };
    let mut names = Names::new(&channels);
    let mut runs: Vec<ChannelRun> = channels.into_iter().map(ChannelRun::new).collect();
    let chunk = runs.len().div_ceil(cut.parts.max(1)).max(1);
    let mut parts: Vec<Part> = runs
        .chunks(chunk)
        .enumerate()
        .map(|(k, part)| Part::new(k, k * chunk, part.len(), now))
        .collect();
    let mut renamed = HashMap::new();
    let (mut verifies, mut reconciles) = (0_usize, 0_usize);
    let window = cut.window.max(Duration::milliseconds(1));
    let mut window_end = now;
    loop {
        let mut done = advance(&mut parts, &mut runs, chunk, window_end, &rules);
        // The order one heap over all channels pops their rounds in: by
        // instant, then by channel (a channel has one round an instant);
        // the sort is stable, so each round's actions keep the order they
        // were done in. Windows split the rounds by instant, so taking
        // them window by window is that order too.
        done.sort_by_key(|(round, channel, _)| (*round, *channel));
        let mut actions: Vec<PlannedAction> = done
            .into_iter()
            .map(|(_, _, mut planned)| {
                // A token revoked or expired is named no more: its entry
                // goes, so the map holds only the live synthetic tokens.
                let last = matches!(
                    planned.action,
                    Action::Revoke { .. } | Action::Expire { .. }
                );
                for key_id in key_ids_mut(&mut planned.action) {
                    rename(key_id, &mut renamed, &mut names, last);
                }
                planned
            })
            .filter(|a| a.at <= until)
            .collect();
        // Expiries are stamped with their own instant, which a round
        // reaches exactly (plans wake at every expiry); the sort is
        // stable, so actions of one instant keep the order they were done
        // in.
        actions.sort_by_key(|a| a.at);
        for a in actions {
            match a.action {
                Action::Verify { .. } => verifies += 1,
                Action::Reconcile => reconciles += 1,
                _ => {}
            }
            emit(a)?;
        }
        if window_end >= until {
            break;
        }
        window_end = window_end
            .checked_add_signed(window)
            .map_or(until, |end| end.min(until));
    }
    Ok(Summary {
        complete: parts.iter().all(|p| p.complete),
        routine: (routine == Routine::Simulate).then_some((verifies, reconciles)),
    })
}

/// Runs every part's rounds up to `until` (each part's channels are the
/// `chunk` of `runs` from its base on), on a thread per part when there
/// are two or more; returns what they did, each action with the instant of
/// the round that did it and its channel's index among all channels.
fn advance(
    parts: &mut [Part],
    runs: &mut [ChannelRun],
    chunk: usize,
    until: DateTime<Utc>,
    rules: &Rules,
) -> Vec<(DateTime<Utc>, usize, PlannedAction)> {
    // Nothing due in this window (a quiet day of a forecast without
    // routine reads): no threads for it.
    if parts.iter().all(|p| p.next_due().is_none_or(|t| t > until)) {
        return Vec::new();
    }
    if let [part] = parts {
        return part.advance(runs, until, rules);
    }
    thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter_mut()
            .zip(runs.chunks_mut(chunk))
            .map(|(part, runs)| s.spawn(move || part.advance(runs, until, rules)))
            .collect();
        let mut done = Vec::new();
        for h in handles {
            done.extend(h.join().unwrap_or_else(|panic| resume_unwind(panic)));
        }
        done
    })
}

/// One thread's run of channels: when each is next due, earliest first;
/// ties in channel order, as the daemon's scheduler works them. Channels
/// share nothing (capacity and the hourly budget are per channel), so a
/// channel is only looked at when its own plans asked: looking at it in
/// between, as a daemon pass for another channel does, finds nothing to do
/// by construction (plans wake at every instant their answer could
/// change). So the cost grows with the channels' own rounds, not with
/// channels times instants.
struct Part {
    /// The index of its first channel among all channels.
    base: usize,
    names: Placeholders,
    due: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    /// False once a channel reached [`MAX_ROUNDS_PER_CHANNEL`].
    complete: bool,
}

impl Part {
    /// Part number `part` of `len` channels from index `base` on, each due
    /// at `now`.
    fn new(part: usize, base: usize, len: usize, now: DateTime<Utc>) -> Self {
        Self {
            base,
            names: Placeholders { part, next: 0 },
            due: (0..len).map(|i| Reverse((now, i))).collect(),
            complete: true,
        }
    }

    /// When its earliest channel is due.
    fn next_due(&self) -> Option<DateTime<Utc>> {
        self.due.peek().map(|Reverse((t, _))| *t)
    }

    /// Runs the rounds of `runs` (its channels) due up to `until`.
    fn advance(
        &mut self,
        runs: &mut [ChannelRun],
        until: DateTime<Utc>,
        rules: &Rules,
    ) -> Vec<(DateTime<Utc>, usize, PlannedAction)> {
        let (mut actions, mut round_out) = (Vec::new(), Vec::new());
        while let Some(t) = self.next_due().filter(|t| *t <= until) {
            let Some(Reverse((_, i))) = self.due.pop() else {
                break;
            };
            let run = &mut runs[i];
            if run.rounds >= MAX_ROUNDS_PER_CHANNEL {
                self.complete = false;
                continue;
            }
            run.rounds += 1;
            // Every plan without steps wakes strictly later; the max only
            // keeps a bug from stalling virtual time (by the store's
            // resolution, a millisecond, so the timeline keeps the
            // daemon's instants).
            let next = run
                .round(t, rules, &mut self.names, &mut round_out)
                .max(t + Duration::milliseconds(1));
            actions.extend(round_out.drain(..).map(|a| (t, self.base + i, a)));
            self.due.push(Reverse((next, i)));
        }
        actions
    }
}

/// A part's names for the tokens it imagines issued: unique across parts,
/// kept apart from real key IDs by [`PLACEHOLDER_MARK`], and carrying the
/// `sl:` prefix of a short-lived token, by which the driver counts it in
/// its own pool. The driver compares key IDs for equality, and orders by
/// them only to break a tie between two live tokens of one group issued
/// and expiring in the same millisecond, which the config's rules exclude
/// (`rotate_before` plus jitter is shorter than the lifetime); so the
/// decisions are those the final names would give.
struct Placeholders {
    part: usize,
    next: u64,
}

impl Placeholders {
    fn fresh(&mut self, kind: TokenKind) -> KeyId {
        let prefix = match kind {
            TokenKind::V21 => "",
            TokenKind::ShortLived => SHORT_LIVED_PREFIX,
        };
        self.next += 1;
        // Zero-padded, so a part's placeholders sort in the order it issued
        // them whatever their number of digits.
        KeyId::new(format!(
            "{prefix}{PLACEHOLDER_MARK}{}.{:020}",
            self.part, self.next
        ))
    }
}

/// Replaces a placeholder with its synthetic name: the one given when it
/// was first met, or the next free one. Actions are renamed in the order
/// one thread would have done them, so the names come out as it would
/// have given them. `last`: the token is named for the last time (it is
/// revoked or expires), so its entry goes.
fn rename(key_id: &mut KeyId, renamed: &mut HashMap<KeyId, KeyId>, names: &mut Names, last: bool) {
    if !key_id.as_str().contains(PLACEHOLDER_MARK) {
        return;
    }
    let name = if last {
        renamed.remove(key_id)
    } else {
        renamed.get(key_id).cloned()
    };
    *key_id = name.unwrap_or_else(|| {
        let fresh = names.fresh(key_id.kind());
        if !last {
            renamed.insert(key_id.clone(), fresh.clone());
        }
        fresh
    });
}

/// The key IDs an action names. Every alert is listed with its fields
/// spelled out, so a new alert, or a new field, is seen here.
fn key_ids_mut(action: &mut Action) -> Vec<&mut KeyId> {
    match action {
        Action::Issue { key_id, .. }
        | Action::Revoke { key_id, .. }
        | Action::Expire { key_id }
        | Action::Verify { key_id } => vec![key_id],
        Action::Reconcile => Vec::new(),
        Action::Alert(alert) => match alert {
            Alert::ExpiresBeforeSuccessor { key_id, .. }
            | Alert::RevokeNeedsSecret { key_id, .. }
            | Alert::ForeignToken { key_id } => vec![key_id],
            Alert::LostToken { candidates, .. } => candidates.iter_mut().collect(),
            Alert::NoLiveToken { .. }
            | Alert::NoCapacity { .. }
            | Alert::RateLimited { .. }
            | Alert::PermanentFailure { .. }
            | Alert::TooManyLive { .. }
            | Alert::ReconcileFailing { .. }
            | Alert::ChannelFull { .. }
            | Alert::CapacityLow { .. }
            | Alert::ShortLivedEvicted { .. } => Vec::new(),
        },
    }
}

/// Hands out synthetic key IDs that collide with no stored one. Only the
/// stored ones are kept: the counter never gives a name twice.
struct Names {
    taken: BTreeSet<KeyId>,
    next: u64,
}

impl Names {
    fn new(channels: &[ChannelInput]) -> Self {
        let taken = channels
            .iter()
            .flat_map(|c| c.groups.iter())
            .flat_map(|g| g.tokens.iter())
            .map(|t| t.key_id.clone())
            .collect();
        Self { taken, next: 1 }
    }

    /// A fresh name for a token of `kind`: short-lived ones carry the
    /// `sl:` prefix their real identities have, so the driver counts them
    /// in their own pool.
    fn fresh(&mut self, kind: TokenKind) -> KeyId {
        let prefix = match kind {
            TokenKind::V21 => "",
            TokenKind::ShortLived => SHORT_LIVED_PREFIX,
        };
        loop {
            let candidate = KeyId::new(format!("{prefix}{SYNTHETIC_KEY_PREFIX}{}", self.next));
            self.next += 1;
            if !self.taken.contains(&candidate) {
                return candidate;
            }
        }
    }
}

/// One channel's evolving state.
struct ChannelRun {
    channel: ChannelId,
    managed: bool,
    /// What the driver reads, changed in place as steps succeed.
    state: ChannelState,
    /// Rounds run so far ([`MAX_ROUNDS_PER_CHANNEL`]).
    rounds: usize,
    /// The alert kinds each group (by index, as `state.groups`) has
    /// raised, to record each when it starts.
    alerts: Vec<Vec<Discriminant<Alert>>>,
}

impl ChannelRun {
    fn new(input: ChannelInput) -> Self {
        let alerts = input.groups.iter().map(|_| Vec::new()).collect();
        Self {
            channel: input.channel,
            managed: input.managed,
            state: ChannelState {
                groups: input.groups,
                view: input.view,
            },
            rounds: 0,
            alerts,
        }
    }

    /// Everything the daemon would do on this channel at `t`; returns when
    /// to look again.
    fn round(
        &mut self,
        t: DateTime<Utc>,
        rules: &Rules,
        names: &mut Placeholders,
        out: &mut Vec<PlannedAction>,
    ) -> DateTime<Utc> {
        self.expire(t, out);
        if !self.managed {
            return self
                .state
                .groups
                .iter()
                .flat_map(|g| g.live(t))
                .map(|tok| tok.expires_at)
                .min()
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
        }
        for _ in 0..MAX_PLANS_PER_ROUND {
            if let Some(wake) = self.step(t, rules, names, out) {
                return wake;
            }
        }
        // As the rotator: a channel that never settles is looked at again
        // shortly; but not past one of its expiries, which a round must
        // reach exactly (its `Expire` is stamped with that instant, and a
        // window must not end between the two).
        self.state
            .groups
            .iter()
            .flat_map(|g| g.live(t))
            .map(|tok| tok.expires_at)
            .fold(t + Duration::seconds(1), DateTime::min)
    }

    /// Marks the tokens whose expiry has come as expired, counting those
    /// the last listing saw live as the store does
    /// ([`policy::ChannelView::expired_since_listing`]): dropped from the
    /// groups, they would otherwise no longer take room during a full
    /// hold, and `plan` would show an issue before the daemon makes it.
    fn expire(&mut self, t: DateTime<Utc>, out: &mut Vec<PlannedAction>) {
        let view = &mut self.state.view;
        for g in &mut self.state.groups {
            for tok in &mut g.tokens {
                if tok.state == TokenState::Live && tok.expires_at <= t {
                    tok.state = TokenState::Expired;
                    let listed = view.last_reconcile_at.is_some_and(|at| {
                        tok.kind().is_listed() && tok.issued_at <= at && at < tok.expires_at
                    });
                    if listed {
                        view.expired_since_listing = view.expired_since_listing.saturating_add(1);
                    }
                    out.push(PlannedAction {
                        at: tok.expires_at,
                        channel: self.channel.clone(),
                        group: g.group.clone(),
                        action: Action::Expire {
                            key_id: tok.key_id.clone(),
                        },
                    });
                }
            }
            // Only live tokens matter to the policy; dropping the rest keeps
            // every later plan cheap over a long forecast.
            g.tokens.retain(|tok| tok.state == TokenState::Live);
        }
    }

    /// One round of the rotator's loop, through the same driver
    /// ([`drive`]): `None` when something was done (drive again),
    /// `Some(wake)` when nothing is due before `wake`.
    fn step(
        &mut self,
        t: DateTime<Utc>,
        rules: &Rules,
        names: &mut Placeholders,
        out: &mut Vec<PlannedAction>,
    ) -> Option<DateTime<Utc>> {
        let window_start = t - policy::rate::ISSUE_WINDOW;
        // Each group's count and latest attempt, as the snapshot reads
        // them, from the channel's attempts: the driver adds to those as
        // it assumes issues.
        let view = &mut self.state.view;
        view.issues_last_hour.retain(|(_, at)| *at > window_start);
        for g in &mut self.state.groups {
            let own = || {
                view.issues_last_hour
                    .iter()
                    .filter(|(group, _)| *group == g.group)
                    .map(|(_, at)| *at)
            };
            g.issued_last_hour = u32::try_from(own().count()).unwrap_or(u32::MAX);
            g.last_issue_at = own().max();
        }
        let decision = drive(t, &self.state, rules);
        for (i, plan) in decision.plans.iter().enumerate() {
            self.note_alerts(t, i, &plan.alerts, out);
        }
        match decision.next {
            Next::Execute { group, plan } => {
                for step in &plan.steps {
                    self.apply(t, group, step, rules, names, out);
                }
                // As the daemon: a plan whose steps all ran ends the
                // failure streak when one of them was the step that
                // failed, or an issue.
                let g = &mut self.state.groups[group];
                if g.retry
                    .as_ref()
                    .is_some_and(|r| plan.steps.iter().any(|s| r.ended_by(s.kind())))
                {
                    g.retry = None;
                }
                None
            }
            Next::FreeCapacity { victims, .. } => {
                for (owner, key_id) in victims {
                    self.revoke(t, &owner, &key_id, RevokeReason::FreeCapacity, out);
                }
                None
            }
            Next::Idle { until } => Some(until.max(t)),
        }
    }

    fn apply(
        &mut self,
        t: DateTime<Utc>,
        i: usize,
        step: &Step,
        rules: &Rules,
        names: &mut Placeholders,
        out: &mut Vec<PlannedAction>,
    ) {
        let group = self.state.groups[i].group.clone();
        let action = match step {
            Step::Reconcile => {
                self.state.view.last_reconcile_at = Some(t);
                self.state.view.expired_since_listing = 0;
                self.state.view.lost = 0;
                self.state.view.reconcile_retry = None;
                self.state.view.relist_needed = false;
                Action::Reconcile
            }
            Step::Revoke { key_id, reason } => {
                self.revoke(t, &group, key_id, *reason, out);
                return;
            }
            Step::Verify { key_id } => {
                let g = &mut self.state.groups[i];
                if g.current(t).is_some_and(|c| c.key_id == *key_id) {
                    g.last_verified_at = Some(t);
                }
                if let Some(token) = g.tokens.iter_mut().find(|k| k.key_id == *key_id) {
                    token.verified_at = Some(t);
                }
                Action::Verify {
                    key_id: key_id.clone(),
                }
            }
            Step::CloseRequests { .. } => {
                self.state.groups[i].requests.clear();
                return;
            }
            Step::Issue {
                reason, token_exp, ..
            } => {
                let key_id = names.fresh(self.state.groups[i].kind);
                let expires_at =
                    assume_issued(&mut self.state, i, t, *token_exp, rules, key_id.clone())
                        .map_or(DateTime::<Utc>::MAX_UTC, |token| token.expires_at);
                Action::Issue {
                    key_id,
                    reason: *reason,
                    expires_at,
                }
            }
        };
        out.push(PlannedAction {
            at: t,
            channel: self.channel.clone(),
            group,
            action,
        });
    }

    fn revoke(
        &mut self,
        t: DateTime<Utc>,
        owner: &GroupName,
        key_id: &KeyId,
        reason: RevokeReason,
        out: &mut Vec<PlannedAction>,
    ) {
        let token = self
            .state
            .groups
            .iter_mut()
            .filter(|g| &g.group == owner)
            .flat_map(|g| g.tokens.iter_mut())
            .find(|tok| &tok.key_id == key_id && tok.state == TokenState::Live);
        if let Some(tok) = token {
            tok.state = TokenState::Revoked;
        }
        // A slot of ours is free at LINE now, whatever its 30-token refusal
        // said: the daemon drops the refusal's hold on such a revocation.
        if key_id.kind() == TokenKind::V21 {
            self.state.view.full_until = None;
            self.state.view.relist_needed = false;
        }
        for g in &mut self.state.groups {
            g.tokens.retain(|tok| tok.state == TokenState::Live);
        }
        out.push(PlannedAction {
            at: t,
            channel: self.channel.clone(),
            group: owner.clone(),
            action: Action::Revoke {
                key_id: key_id.clone(),
                reason,
            },
        });
    }

    /// Records each alert kind of group `i` when it starts, as the rotator
    /// logs it.
    fn note_alerts(
        &mut self,
        t: DateTime<Utc>,
        i: usize,
        alerts: &[Alert],
        out: &mut Vec<PlannedAction>,
    ) {
        let raised = &mut self.alerts[i];
        if alerts.is_empty() && raised.is_empty() {
            // The common case, and a forecast plans every group many times.
            return;
        }
        let kinds: Vec<_> = alerts.iter().map(std::mem::discriminant).collect();
        for alert in alerts {
            if !raised.contains(&std::mem::discriminant(alert)) {
                out.push(PlannedAction {
                    at: t,
                    channel: self.channel.clone(),
                    group: self.state.groups[i].group.clone(),
                    action: Action::Alert(alert.clone()),
                });
            }
        }
        *raised = kinds;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::domain::TokenRecord;
    use crate::policy::{FailureKind, JitterPurpose, RetryState, StepKind, stable_jitter};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn ch() -> ChannelId {
        ChannelId::new("1234567890")
    }

    fn token(key: &str, issued: DateTime<Utc>, lifetime: Duration) -> TokenRecord {
        TokenRecord {
            key_id: KeyId::new(key),
            issued_at: issued,
            expires_at: issued + lifetime,
            state: TokenState::Live,
            refused_at: None,
            verified_at: None,
        }
    }

    fn group(name: &str, can_revoke: bool, tokens: Vec<TokenRecord>) -> GroupView {
        GroupView {
            tokens,
            ..GroupView::new(ch(), GroupName::new(name), can_revoke)
        }
    }

    fn input(groups: Vec<GroupView>, last_reconcile_at: Option<DateTime<Utc>>) -> ChannelInput {
        ChannelInput {
            channel: ch(),
            managed: true,
            groups,
            view: ChannelView {
                last_reconcile_at,
                ..ChannelView::default()
            },
        }
    }

    /// The forecast with every routine read, after checking that the
    /// forecast without them changes the channels at the same instants in
    /// the same way (the promise of [`Routine::Skip`]).
    ///
    /// Both are also run in two parts, which these tests' one channel
    /// leaves with one thread each (the merging of parts is tested below),
    /// and in windows of an hour and of seven, which must not change them.
    fn run(channels: Vec<ChannelInput>, rules: &Rules, days: i64) -> Forecast {
        let until = t0() + Duration::days(days);
        let full = forecast(t0(), channels.clone(), rules, until, Routine::Simulate, 1);
        let lean = forecast(t0(), channels.clone(), rules, until, Routine::Skip, 1);
        for (routine, one) in [(Routine::Simulate, &full), (Routine::Skip, &lean)] {
            for (parts, hours) in [(2, 24), (1, 1), (2, 7)] {
                let window = Duration::hours(hours);
                let cut = cut_up(&channels, rules, until, routine, parts, window);
                assert_eq!(&cut, one, "{routine:?} in {parts} parts, {hours} h windows");
            }
        }
        assert_eq!(timeline(&lean), timeline(&full), "Skip and Simulate differ");
        assert_eq!(lean.complete, full.complete);
        assert!(lean.routine.is_none() && full.routine.is_some());
        full
    }

    /// The forecast from t0 cut into `parts` runs of channels and windows
    /// of `window`, collected.
    fn cut_up(
        channels: &[ChannelInput],
        rules: &Rules,
        until: DateTime<Utc>,
        routine: Routine,
        parts: usize,
        window: Duration,
    ) -> Forecast {
        let mut actions = Vec::new();
        let cut = Cut { parts, window };
        let Ok(summary) = forecast_in(t0(), channels.to_vec(), rules, until, routine, cut, |a| {
            actions.push(a);
            Ok::<(), Infallible>(())
        });
        Forecast {
            from: t0(),
            until,
            actions,
            complete: summary.complete,
            routine: summary.routine,
        }
    }

    /// The non-routine actions as (offset from t0, group, short text).
    fn timeline(f: &Forecast) -> Vec<(Duration, String, String)> {
        f.actions
            .iter()
            .filter(|a| !a.action.is_routine() && !matches!(a.action, Action::Alert(_)))
            .map(|a| {
                let what = match &a.action {
                    Action::Issue { key_id, reason, .. } => format!("issue {key_id} {reason:?}"),
                    Action::Revoke { key_id, reason } => format!("revoke {key_id} {reason:?}"),
                    Action::Expire { key_id } => format!("expire {key_id}"),
                    other => format!("{other:?}"),
                };
                (a.at - t0(), a.group.to_string(), what)
            })
            .collect()
    }

    fn rotation_jitter(group: &str, rules: &Rules) -> Duration {
        stable_jitter(
            &ch(),
            &GroupName::new(group),
            JitterPurpose::Rotation,
            rules.rotation_jitter,
        )
    }

    #[test]
    fn a_fresh_group_issues_now_and_rotates_at_lifetime_less_rotate_before_and_jitter() {
        let rules = Rules::default();
        let f = run(
            vec![input(vec![group("backend", true, vec![])], None)],
            &rules,
            60,
        );
        assert!(f.complete);
        // Reconcile first (no listing yet), then the issue, at once.
        assert_eq!(f.actions[0].action, Action::Reconcile);
        assert_eq!(f.actions[0].at, t0());
        let rotate_after =
            rules.token_lifetime - rules.rotate_before - rotation_jitter("backend", &rules);
        let issues: Vec<_> = timeline(&f)
            .into_iter()
            .filter(|(_, _, what)| what.starts_with("issue"))
            .collect();
        assert_eq!(
            issues[..3],
            [
                (
                    Duration::zero(),
                    "backend".into(),
                    "issue next-1 NoCurrent".into()
                ),
                (rotate_after, "backend".into(), "issue next-2 Due".into()),
                (
                    rotate_after * 2,
                    "backend".into(),
                    "issue next-3 Due".into()
                ),
            ]
        );
        // Without revoke_previous_after the previous token expires on its own.
        assert!(timeline(&f).contains(&(
            rules.token_lifetime,
            "backend".into(),
            "expire next-1".into()
        )));
        assert!(!timeline(&f).iter().any(|(_, _, w)| w.starts_with("revoke")));
    }

    #[test]
    fn verifies_and_reconciles_are_recorded_as_routine() {
        let rules = Rules::default();
        let f = run(
            vec![input(vec![group("backend", true, vec![])], None)],
            &rules,
            2,
        );
        let verifies = f
            .actions
            .iter()
            .filter(|a| matches!(a.action, Action::Verify { .. }))
            .count();
        // Every 6 h less a stable jitter, over two days.
        assert!((7..=9).contains(&verifies), "{verifies}");
        assert!(
            f.actions
                .iter()
                .filter(|a| a.action == Action::Reconcile)
                .count()
                >= 40
        );
        assert!(f.actions.iter().all(|a| a.at >= t0() && a.at <= f.until));
    }

    #[test]
    fn two_live_tokens_and_no_secret_wait_for_the_older_to_expire() {
        let rules = Rules::default();
        // Current expires in 10 h (rotation is due), previous in 2 h.
        let prev = token(
            "old",
            t0() - Duration::days(29) - Duration::hours(22),
            rules.token_lifetime,
        );
        let cur = token(
            "cur",
            t0() - Duration::days(29) - Duration::hours(14),
            rules.token_lifetime,
        );
        let f = run(
            vec![input(
                vec![group("crm", false, vec![prev, cur])],
                Some(t0()),
            )],
            &rules,
            1,
        );
        let tl = timeline(&f);
        assert_eq!(
            tl[..2],
            [
                (Duration::hours(2), "crm".into(), "expire old".into()),
                (Duration::hours(2), "crm".into(), "issue next-1 Due".into()),
            ],
            "{tl:?}"
        );
        assert!(!tl.iter().any(|(_, _, w)| w.starts_with("revoke")));
    }

    #[test]
    fn a_full_refusal_with_the_listing_failing_frees_one_slot_as_the_daemon_does() {
        // Found by review: the forecast kept the refusal's hold after its
        // own revocation, so `plan` showed every superseded token revoked
        // where the daemon revokes one and issues.
        let rules = Rules::default();
        let pair = |name: &str| {
            group(
                name,
                true,
                vec![
                    token(
                        &format!("{name}-old"),
                        t0() - Duration::days(2),
                        rules.token_lifetime,
                    ),
                    token(name, t0() - Duration::days(1), rules.token_lifetime),
                ],
            )
        };
        let mut channel = input(
            vec![group("a", true, vec![]), pair("b"), pair("c")],
            Some(t0() - Duration::minutes(2)),
        );
        channel.view.foreign = 20;
        channel.view.full_until = Some(t0() + Duration::minutes(1));
        channel.view.relist_needed = true;
        channel.view.reconcile_retry = Some(RetryState {
            failures: 2,
            kind: FailureKind::Transient,
            step: Some(StepKind::Reconcile),
            not_before: t0() + Duration::minutes(10),
        });
        let f = run(vec![channel], &rules, 1);
        let first: Vec<_> = timeline(&f)
            .into_iter()
            .filter(|(at, _, _)| *at < Duration::minutes(10))
            .collect();
        assert_eq!(
            first,
            [
                (
                    Duration::zero(),
                    "b".into(),
                    "revoke b-old FreeCapacity".into()
                ),
                (
                    Duration::zero(),
                    "a".into(),
                    "issue next-1 NoCurrent".into()
                ),
            ],
            "{first:?}"
        );
    }

    #[test]
    fn revoke_previous_after_shows_the_revocation() {
        let rules = Rules {
            revoke_previous_after: Some(Duration::hours(1)),
            ..Rules::default()
        };
        // Due in 3 h plus jitter.
        let cur = token(
            "cur",
            t0() - Duration::days(28) - Duration::hours(21),
            rules.token_lifetime,
        );
        let due = cur.expires_at - rules.rotate_before - rotation_jitter("backend", &rules) - t0();
        let f = run(
            vec![input(vec![group("backend", true, vec![cur])], Some(t0()))],
            &rules,
            2,
        );
        assert_eq!(
            timeline(&f)[..2],
            [
                (due, "backend".into(), "issue next-1 Due".into()),
                (
                    due + Duration::hours(1),
                    "backend".into(),
                    "revoke cur Superseded".into()
                ),
            ]
        );
    }

    #[test]
    fn a_removed_group_is_revoked_after_its_grace() {
        let rules = Rules::default();
        let removed = GroupView {
            removed_at: Some(t0() - Duration::hours(1)),
            ..group(
                "old-team",
                true,
                vec![
                    token("a", t0() - Duration::days(3), rules.token_lifetime),
                    token("b", t0() - Duration::days(1), rules.token_lifetime),
                ],
            )
        };
        let f = run(vec![input(vec![removed], Some(t0()))], &rules, 3);
        assert_eq!(
            timeline(&f),
            [
                (
                    Duration::hours(23),
                    "old-team".into(),
                    "revoke a Removed".into()
                ),
                (
                    Duration::hours(23),
                    "old-team".into(),
                    "revoke b Removed".into()
                ),
            ]
        );
    }

    #[test]
    fn a_retry_streak_holds_the_issue_until_its_time() {
        let rules = Rules::default();
        let failing = GroupView {
            retry: Some(RetryState {
                failures: 3,
                kind: FailureKind::Transient,
                step: Some(StepKind::Issue),
                not_before: t0() + Duration::minutes(7),
            }),
            ..group("backend", true, vec![])
        };
        let f = run(vec![input(vec![failing], Some(t0()))], &rules, 1);
        let first_issue = timeline(&f)
            .into_iter()
            .find(|(_, _, w)| w.starts_with("issue"));
        assert_eq!(
            first_issue,
            Some((
                Duration::minutes(7),
                "backend".into(),
                "issue next-1 NoCurrent".into()
            ))
        );
        // The group has no token while it waits: the daemon alerts at once.
        assert!(
            f.actions
                .iter()
                .any(|a| a.at == t0()
                    && matches!(a.action, Action::Alert(Alert::NoLiveToken { .. })))
        );
    }

    #[test]
    fn new_groups_are_issued_at_once_despite_the_hourly_budget() {
        // The first-start burst: five new groups on a budget of two an hour
        // are all issued in the first round, not over three hours.
        let rules = Rules {
            max_issues_per_hour: 2,
            ..Rules::default()
        };
        let groups = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|g| group(g, true, vec![]))
            .collect();
        let f = run(vec![input(groups, Some(t0()))], &rules, 1);
        let issues: Vec<Duration> = timeline(&f)
            .into_iter()
            .filter(|(_, _, w)| w.starts_with("issue"))
            .map(|(at, _, _)| at)
            .collect();
        assert_eq!(issues, [Duration::zero(); 5]);
    }

    #[test]
    fn the_hourly_budget_spreads_rotations() {
        // Five groups whose tokens all fall due at once rotate two an hour.
        let rules = Rules {
            max_issues_per_hour: 2,
            rotation_jitter: Duration::zero(),
            ..Rules::default()
        };
        let issued = t0() - Duration::days(29) + Duration::minutes(1);
        let groups = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|g| {
                group(
                    g,
                    true,
                    vec![token(&format!("{g}1"), issued, Duration::days(30))],
                )
            })
            .collect();
        let f = run(vec![input(groups, Some(t0()))], &rules, 1);
        let issues: Vec<Duration> = timeline(&f)
            .into_iter()
            .filter(|(_, _, w)| w.starts_with("issue"))
            .map(|(at, _, _)| at)
            .collect();
        assert_eq!(issues.len(), 5, "{issues:?}");
        for pair in issues.windows(3) {
            assert!(pair[2] - pair[0] >= Duration::hours(1), "{issues:?}");
        }
    }

    #[test]
    fn under_a_full_hold_a_token_expired_since_the_listing_still_takes_room() {
        // LINE refused for a full channel; the listing after it counted 29
        // foreign tokens and a's, which expires at 700 ms. LINE may count
        // it until the hold ends at 1.7 s, and so does the daemon (the
        // store's count): the forecast once dropped the expired token and
        // showed the issue at 700 ms.
        let rules = Rules::default();
        let expires = t0() + Duration::milliseconds(700);
        let a = group(
            "a",
            true,
            vec![token(
                "a-cur",
                expires - rules.token_lifetime,
                rules.token_lifetime,
            )],
        );
        let mut channel = input(vec![a, group("b", true, vec![])], Some(t0()));
        channel.view.foreign = 29;
        let until = t0() + Duration::milliseconds(1_700);
        channel.view.full_until = Some(until);
        let f = run(vec![channel], &rules, 1);
        let issues: Vec<_> = f
            .actions
            .iter()
            .filter(|a| matches!(a.action, Action::Issue { .. }))
            .map(|a| a.at)
            .collect();
        assert_eq!(issues.first(), Some(&until), "{:?}", timeline(&f));
    }

    #[test]
    fn a_full_channel_frees_capacity_from_superseded_tokens() {
        let rules = Rules {
            channel_token_cap: 3,
            ..Rules::default()
        };
        // "a" holds a current and a previous; "b" has nothing.
        let a = group(
            "a",
            true,
            vec![
                token("a-old", t0() - Duration::days(10), rules.token_lifetime),
                token("a-cur", t0() - Duration::days(1), rules.token_lifetime),
            ],
        );
        let b = group("b", true, vec![]);
        let mut channel = input(vec![a, b], Some(t0()));
        channel.view.foreign = 1;
        let f = run(vec![channel], &rules, 1);
        assert_eq!(
            timeline(&f)[..2],
            [
                (
                    Duration::zero(),
                    "a".into(),
                    "revoke a-old FreeCapacity".into()
                ),
                (
                    Duration::zero(),
                    "b".into(),
                    "issue next-1 NoCurrent".into()
                ),
            ]
        );
    }

    #[test]
    fn an_unmanaged_channel_only_expires() {
        let rules = Rules::default();
        let mut channel = input(
            vec![group(
                "gone",
                true,
                vec![token("x", t0() - Duration::days(29), rules.token_lifetime)],
            )],
            None,
        );
        channel.managed = false;
        let f = run(vec![channel], &rules, 3);
        assert_eq!(
            timeline(&f),
            [(Duration::days(1), "gone".into(), "expire x".into())]
        );
        assert_eq!(f.actions.len(), 1);
    }

    #[test]
    fn synthetic_key_ids_never_reuse_a_stored_one() {
        let rules = Rules::default();
        let expired = TokenRecord {
            state: TokenState::Expired,
            ..token("next-1", t0() - Duration::days(40), rules.token_lifetime)
        };
        let f = run(
            vec![input(vec![group("g", true, vec![expired])], Some(t0()))],
            &rules,
            1,
        );
        assert_eq!(
            timeline(&f)[0],
            (
                Duration::zero(),
                "g".into(),
                "issue next-2 NoCurrent".into()
            )
        );
    }

    /// Replays a timeline per group and checks invariants 1 and 2 on it:
    /// never more than two live tokens, and once the first token is issued,
    /// always one live.
    fn check_invariants(f: &Forecast) {
        let mut live: HashMap<GroupName, BTreeSet<KeyId>> = HashMap::new();
        for a in &f.actions {
            let group = live.entry(a.group.clone()).or_default();
            match &a.action {
                Action::Issue { key_id, .. } => {
                    group.insert(key_id.clone());
                }
                Action::Revoke { key_id, .. } | Action::Expire { key_id } => {
                    group.remove(key_id);
                    assert!(
                        !group.is_empty(),
                        "{} left without a token at {}",
                        a.group,
                        a.at
                    );
                }
                _ => {}
            }
            assert!(group.len() <= 2, "{} holds {group:?} at {}", a.group, a.at);
        }
    }

    #[test]
    fn four_months_of_a_full_channel_complete_and_keep_the_invariants() {
        let rules = Rules {
            revoke_previous_after: Some(Duration::hours(6)),
            ..Rules::default()
        };
        let groups = (0..15)
            .map(|i| group(&format!("g{i}"), true, vec![]))
            .collect();
        let f = run(vec![input(groups, None)], &rules, 120);
        assert!(f.complete);
        check_invariants(&f);
        let issues = f
            .actions
            .iter()
            .filter(|a| matches!(a.action, Action::Issue { .. }))
            .count();
        // Each group: one at once, then one about every 29 days.
        assert_eq!(issues, 15 * 5);
        let no_secret = (0..3)
            .map(|i| group(&format!("n{i}"), false, vec![]))
            .collect();
        let f = run(vec![input(no_secret, None)], &Rules::default(), 120);
        assert!(f.complete);
        check_invariants(&f);
    }

    #[test]
    fn cut_into_parts_a_forecast_of_many_channels_is_one_thread_s_names_and_all() {
        // Channels of one to four groups: fresh groups, tokens at every
        // age, groups without a secret (with the previous token revoked
        // after 6 h, alerts naming synthetic tokens), short-lived groups
        // (their own pool and `sl:` names), stored tokens whose key IDs a
        // synthetic name would take, and a channel that left the config.
        let rules = Rules {
            revoke_previous_after: Some(Duration::hours(6)),
            ..Rules::default()
        };
        let channels: Vec<ChannelInput> = (0..13_i64)
            .map(|c| {
                let channel = ChannelId::new(format!("ch{c:02}"));
                let groups = (0..c % 4 + 1)
                    .map(|g| {
                        let issued = t0() - Duration::days((c * 3 + g * 5) % 29);
                        let kind = if (c + g) % 5 == 4 {
                            TokenKind::ShortLived
                        } else {
                            TokenKind::V21
                        };
                        let key = match (c, g, kind) {
                            (1, 0, _) => "next-3".to_owned(),
                            (3, 1, _) => "sl:next-5".to_owned(),
                            (_, _, TokenKind::ShortLived) => format!("sl:k{c}-{g}"),
                            _ => format!("k{c}-{g}"),
                        };
                        let tokens = if (c + g) % 3 == 0 {
                            vec![]
                        } else {
                            vec![token(&key, issued, Duration::days(30))]
                        };
                        GroupView {
                            tokens,
                            kind,
                            ..GroupView::new(
                                channel.clone(),
                                GroupName::new(format!("g{g}")),
                                c % 2 == 0,
                            )
                        }
                    })
                    .collect();
                ChannelInput {
                    channel,
                    managed: c != 5,
                    groups,
                    view: ChannelView::default(),
                }
            })
            .collect();
        let until = t0() + Duration::days(45);
        for routine in [Routine::Simulate, Routine::Skip] {
            let one = forecast(t0(), channels.clone(), &rules, until, routine, 8);
            assert!(one.complete);
            let names: Vec<&str> = one
                .actions
                .iter()
                .filter_map(|a| match &a.action {
                    Action::Issue { key_id, .. } => Some(key_id.as_str()),
                    _ => None,
                })
                .collect();
            assert!(names.len() > 30, "{names:?}");
            assert!(names.contains(&"next-1") && names.iter().any(|n| n.starts_with("sl:next-")));
            // Named in the order they were issued (an issue is listed at
            // its round's instant, same-instant rounds in channel order),
            // from one counter, passing over stored key IDs.
            let numbers: Vec<u64> = names
                .iter()
                .map(|n| {
                    let n = n.strip_prefix(SHORT_LIVED_PREFIX).unwrap_or(n);
                    n.strip_prefix(SYNTHETIC_KEY_PREFIX)
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{names:?}");
            assert!(!names.contains(&"next-3") && !names.contains(&"sl:next-5"));
            // No placeholder is left anywhere, alerts included, and an
            // alert names a synthetic token.
            // (`Debug` writes the mark as `\u{1}`.)
            let written = format!("{:?}", one.actions);
            assert!(!written.contains("\\u{1}"), "{written}");
            assert_eq!(format!("{:?}", PLACEHOLDER_MARK), "'\\u{1}'");
            assert!(one.actions.iter().any(|a| matches!(
                &a.action,
                Action::Alert(Alert::RevokeNeedsSecret { key_id, .. })
                    if key_id.as_str().starts_with(SYNTHETIC_KEY_PREFIX)
            )));
            // Each synthetic token is named from its issue to its revocation
            // or expiry, and never after: the renaming forgets a name at its
            // last use, and must not give a token two.
            let stored: BTreeSet<&KeyId> = channels
                .iter()
                .flat_map(|c| &c.groups)
                .flat_map(|g| &g.tokens)
                .map(|t| &t.key_id)
                .collect();
            let mut issued = BTreeSet::new();
            let mut gone = BTreeSet::new();
            for a in &one.actions {
                let mut action = a.action.clone();
                for key_id in key_ids_mut(&mut action) {
                    if !is_synthetic(key_id) || stored.contains(&*key_id) {
                        continue;
                    }
                    assert!(
                        !gone.contains(key_id),
                        "{key_id} named after it went: {a:?}"
                    );
                    match &a.action {
                        Action::Issue { .. } => assert!(issued.insert(key_id.clone()), "{a:?}"),
                        _ => assert!(issued.contains(key_id), "{key_id} before its issue: {a:?}"),
                    }
                    if matches!(a.action, Action::Revoke { .. } | Action::Expire { .. }) {
                        gone.insert(key_id.clone());
                    }
                }
            }
            assert!(!gone.is_empty());
            for (parts, hours) in [(2, 24), (5, 24), (13, 24), (40, 24), (1, 3), (5, 240)] {
                let window = Duration::hours(hours);
                let cut = cut_up(&channels, &rules, until, routine, parts, window);
                assert_eq!(cut, one, "{routine:?} in {parts} parts, {hours} h windows");
            }
        }
    }

    #[test]
    fn synthetic_key_ids_of_both_kinds_are_told_from_stored_ones() {
        assert!(is_synthetic(&KeyId::new("next-1")));
        assert!(is_synthetic(&KeyId::new("sl:next-12")));
        assert!(!is_synthetic(&KeyId::new("sl:0123456789abcdef")));
        assert!(!is_synthetic(&KeyId::new("JQs7YmBP-4aKi7TBFW6-Tw")));
    }

    #[test]
    fn nothing_is_listed_past_until_and_a_quiet_forecast_completes() {
        let rules = Rules::default();
        let f = run(vec![], &rules, 7);
        assert!(f.complete);
        assert!(f.actions.is_empty());
        let f = forecast(
            t0(),
            vec![input(vec![group("g", true, vec![])], None)],
            &rules,
            t0(),
            Routine::Simulate,
            1,
        );
        assert!(f.complete);
        assert!(f.actions.iter().all(|a| a.at == t0()));
    }
}
