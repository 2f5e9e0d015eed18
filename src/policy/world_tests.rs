//! Property tests of invariants 1 to 4 (docs/design.md section 3).
//!
//! A tiny in-test "world" plays both the rotator and LINE for one channel
//! with several groups: it builds views, calls [`plan_group`], executes the
//! steps against a fake LINE (which enforces the channel cap and can fail,
//! answer ambiguously, or have tokens revoked behind our back), frees
//! capacity with [`capacity_victims`] when a plan holds for it, and advances
//! a virtual clock to the earliest wake-up (or less). After every plan and
//! every step it checks:
//!
//! 1. no group ever has more than two live recorded tokens;
//! 2. (no faults) every group always has a live current token with time
//!    left, and each rotation starts exactly `rotate_before` plus the group's
//!    jitter ahead of expiry (never earlier, in any run);
//! 3. no issue is attempted unless the channel, as last reconciled (at most
//!    `reconcile_max_age_before_issue` ago), has room;
//! 4. no rolling hour ever holds more than twice `max_issues_per_hour`
//!    repeat attempts (attempts of a group that made another after it in
//!    the hour), so no more than twice the budget plus one per group, and
//!    every attempt over the budget is a first-start burst (no usable
//!    token, the group's first attempt in the hour) or a deadline rescue
//!    (no usable token, or the budget's next slot after the token's expiry
//!    less the margin; the group's last attempt a minute ago or more; the
//!    channel below twice its budget in repeats), as docs/design.md
//!    section 5.8 and `rate` state it.
//!
//! The world draws its randomness from a seeded splitmix64, so a failing
//! case is reproduced by its seed.

use chrono::{DateTime, Duration, Utc};
use proptest::prelude::*;

use super::*;
use crate::domain::{
    ChannelId, GroupName, KeyId, OpenRequest, RequestKind, TokenKind, TokenRecord, TokenState,
};
use crate::policy::channel::{ChannelState, Next, drive, full_until, listing_deadline};

/// splitmix64: small, seedable, good enough to roll dice.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in [lo, hi] (milliseconds).
    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
}

/// How hostile the world is. All zero: the happy path.
#[derive(Debug, Clone, Default)]
struct Faults {
    /// Chance that any request fails.
    fail: f64,
    /// Share of failures that are permanent.
    permanent: f64,
    /// Share of failed issues where LINE issued a token anyway.
    ambiguous: f64,
    /// Chance per tick that another team issues a token on the channel.
    foreign: f64,
    /// Chance per tick that one of our tokens is revoked in the console.
    kill: f64,
    /// Chance per tick of an operator `rotate` or `revoke` for a group.
    operator: f64,
    /// Chance per tick that a group is removed from the config.
    removal: f64,
}

impl Faults {
    fn none(&self) -> bool {
        [
            self.fail,
            self.ambiguous,
            self.foreign,
            self.kill,
            self.operator,
            self.removal,
        ]
        .iter()
        .all(|p| *p == 0.0)
    }
}

#[derive(Debug, Clone)]
struct Params {
    rules: Rules,
    groups: usize,
    can_revoke: bool,
    faults: Faults,
    ticks: usize,
    max_step: Duration,
    seed: u64,
}

/// One of our recorded tokens: the daemon's record and LINE's truth.
struct Ours {
    rec: TokenRecord,
    group: usize,
    /// False once LINE stopped accepting it (revoked by us or in the console).
    at_line: bool,
}

/// A token on the channel that is not (recorded as) ours.
struct Other {
    expires_at: DateTime<Utc>,
    /// Listed by a reconcile since it appeared.
    listed: bool,
}

/// What happened, so a run can be checked for having exercised anything.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    issues: u32,
    due_issues: u32,
    failures: u32,
    /// Failures that were LINE's 429.
    rate_limited: u32,
    capacity_holds: u32,
    rate_holds: u32,
    victims: u32,
    make_room: u32,
    /// Attempts over the budget that were no first-start burst.
    rescues: u32,
    refused_full: u32,
    criticals: u32,
}

struct World {
    p: Params,
    now: DateTime<Utc>,
    rng: Rng,
    /// The groups' views without tokens: requests, retry, verification.
    groups: Vec<GroupView>,
    ours: Vec<Ours>,
    others: Vec<Other>,
    /// Foreign key IDs as of the last reconcile.
    known_foreign: u32,
    lost: u32,
    last_reconcile_at: Option<DateTime<Utc>>,
    /// Each attempt (any outcome) with its group.
    group_attempts: Vec<(usize, DateTime<Utc>)>,
    /// The key-ID listing's streak (per channel).
    reconcile_retry: Option<RetryState>,
    /// LINE's 30-token refusal: until when, and whether a listing since.
    full_until: Option<DateTime<Utc>>,
    relist_needed: bool,
    next_request: i64,
    next_key: u64,
    stats: Stats,
}

enum Outcome {
    Done,
    Failed(FailureKind, Option<Duration>),
    /// Verify or reconcile found one of our tokens dead: plan again.
    Surprise,
}

impl World {
    fn new(p: Params) -> Self {
        let channel = ChannelId::new("1234567890");
        let groups = (0..p.groups)
            .map(|i| {
                GroupView::new(
                    channel.clone(),
                    GroupName::new(format!("group-{i}")),
                    p.can_revoke,
                )
            })
            .collect();
        Self {
            now: DateTime::from_timestamp(1_750_000_000, 0).unwrap(),
            rng: Rng(p.seed),
            p,
            groups,
            ours: Vec::new(),
            others: Vec::new(),
            known_foreign: 0,
            lost: 0,
            last_reconcile_at: None,
            group_attempts: Vec::new(),
            reconcile_retry: None,
            full_until: None,
            relist_needed: false,
            next_request: 0,
            next_key: 0,
            stats: Stats::default(),
        }
    }

    fn view(&self, gi: usize) -> GroupView {
        let hour_ago = self.now - Duration::hours(1);
        let own = || {
            self.group_attempts
                .iter()
                .filter(|(g, at)| *g == gi && *at > hour_ago)
                .map(|(_, at)| *at)
        };
        GroupView {
            issued_last_hour: u32::try_from(own().count()).unwrap(),
            last_issue_at: own().max(),
            tokens: self
                .ours
                .iter()
                .filter(|o| o.group == gi)
                .map(|o| o.rec.clone())
                .collect(),
            ..self.groups[gi].clone()
        }
    }

    fn views(&self) -> Vec<GroupView> {
        (0..self.groups.len()).map(|gi| self.view(gi)).collect()
    }

    fn channel_view(&self) -> ChannelView {
        let window_start = self.now - Duration::hours(1);
        ChannelView {
            live_ours: live_ours(self.now, &self.views(), TokenKind::V21),
            foreign: self.known_foreign,
            lost: self.lost,
            issues_last_hour: self
                .group_attempts
                .iter()
                .filter(|(_, t)| *t > window_start)
                .map(|(gi, t)| (self.groups[*gi].group.clone(), *t))
                .collect(),
            last_reconcile_at: self.last_reconcile_at,
            reconcile_retry: self.reconcile_retry.clone(),
            full_until: self.full_until,
            relist_needed: self.relist_needed,
            expired_since_listing: self
                .last_reconcile_at
                .map_or(0, |at| expired_since(at, self.now, &self.views())),
            eviction_suspects: Vec::new(),
            held_assertion_exp: None,
        }
    }

    /// LINE's true count of live v2.1 tokens on the channel.
    fn line_count(&self) -> usize {
        let ours = self
            .ours
            .iter()
            .filter(|o| o.at_line && self.now < o.rec.expires_at)
            .count();
        ours + self
            .others
            .iter()
            .filter(|o| self.now < o.expires_at)
            .count()
    }

    /// Whether a request fails, and how: permanent (its share of the
    /// faults), else a 429 one time in four (with a `Retry-After` of up to
    /// ten minutes, which a verify's streak holds only the verifies for),
    /// else transient.
    fn fail(&mut self) -> Option<(FailureKind, Option<Duration>)> {
        if !self.rng.chance(self.p.faults.fail) {
            return None;
        }
        self.stats.failures += 1;
        Some(if self.rng.chance(self.p.faults.permanent) {
            (FailureKind::Permanent, None)
        } else if self.rng.chance(0.25) {
            self.stats.rate_limited += 1;
            let wait = Duration::seconds(self.rng.between(1, 600));
            (FailureKind::RateLimited, Some(wait))
        } else {
            (FailureKind::Transient, None)
        })
    }

    fn record_live(&self, key: &KeyId) -> Option<usize> {
        self.ours
            .iter()
            .position(|o| o.rec.key_id == *key && o.rec.is_live_at(self.now))
    }

    /// Invariant 1 on the daemon's records (which never undercount LINE's
    /// truth for recorded tokens).
    fn check_two_live(&self) {
        for gi in 0..self.groups.len() {
            let live = self.view(gi).live_tokens(self.now).len();
            assert!(
                live <= 2,
                "invariant 1: group {gi} has {live} live tokens at {}",
                self.now
            );
        }
    }

    fn exec(&mut self, gi: usize, step: &Step) -> Outcome {
        let now = self.now;
        match step {
            Step::Reconcile => {
                if let Some((kind, retry_after)) = self.fail() {
                    return Outcome::Failed(kind, retry_after);
                }
                let mut surprise = false;
                for o in self.ours.iter_mut() {
                    if o.rec.is_live_at(now) && !o.at_line {
                        o.rec.state = TokenState::Gone;
                        surprise = true;
                    }
                }
                self.others.retain(|o| now < o.expires_at);
                for o in self.others.iter_mut() {
                    o.listed = true;
                }
                self.known_foreign = u32::try_from(self.others.len()).unwrap();
                self.lost = 0;
                self.relist_needed = false;
                self.last_reconcile_at = Some(now);
                // A token of ours went missing: the rest of the plan was
                // made without knowing, so plan again.
                if surprise {
                    Outcome::Surprise
                } else {
                    Outcome::Done
                }
            }
            Step::Revoke { key_id, .. } => {
                assert!(self.p.can_revoke, "revoke planned without the secret");
                let i = self
                    .record_live(key_id)
                    .expect("revoke of a token that is not live");
                assert_eq!(self.ours[i].group, gi, "revoke of another group's token");
                if let Some((kind, retry_after)) = self.fail() {
                    return Outcome::Failed(kind, retry_after);
                }
                self.ours[i].at_line = false;
                self.ours[i].rec.state = TokenState::Revoked;
                self.slot_freed();
                Outcome::Done
            }
            Step::Verify { key_id } => {
                let view = self.view(gi);
                assert_eq!(
                    view.current(now).map(|c| &c.key_id),
                    Some(key_id),
                    "verify of a non-current token"
                );
                if let Some((kind, retry_after)) = self.fail() {
                    return Outcome::Failed(kind, retry_after);
                }
                let i = self.record_live(key_id).unwrap();
                if self.ours[i].at_line {
                    self.groups[gi].last_verified_at = Some(now);
                    Outcome::Done
                } else {
                    self.ours[i].rec.state = TokenState::Gone;
                    Outcome::Surprise
                }
            }
            Step::Issue {
                reason,
                token_exp,
                closes,
            } => {
                let outcome = self.issue(gi, *reason, *token_exp);
                if matches!(outcome, Outcome::Done) {
                    self.groups[gi].requests.retain(|r| !closes.contains(&r.id));
                }
                outcome
            }
            Step::CloseRequests { ids } => {
                self.groups[gi].requests.retain(|r| !ids.contains(&r.id));
                Outcome::Done
            }
        }
    }

    fn issue(&mut self, gi: usize, reason: IssueReason, token_exp: Duration) -> Outcome {
        let now = self.now;
        let view = self.view(gi);
        assert!(view.removed_at.is_none(), "issue for a removed group");
        assert!(
            view.live_tokens(now).len() <= 1,
            "invariant 1: issue would make a third live token"
        );
        // Invariant 4, counted the way the store counts: every attempt,
        // from the world's own journal rather than the views.
        let hour_ago = now - Duration::hours(1);
        let before: Vec<DateTime<Utc>> = self
            .group_attempts
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t > hour_ago)
            .collect();
        let repeats_before = repeats(
            self.group_attempts
                .iter()
                .filter(|(_, t)| *t > hour_ago)
                .map(|(g, _)| *g),
        );
        let own_last = self
            .group_attempts
            .iter()
            .filter(|(g, t)| *g == gi && *t > hour_ago)
            .map(|(_, t)| *t)
            .max();
        let budget = self.p.rules.max_issues_per_hour as usize;
        if before.len() >= budget {
            let current = view.current(now);
            // An incident's issue is no first-start burst: it is a rescue.
            let burst = current.is_none() && own_last.is_none() && reason == IssueReason::NoCurrent;
            if !burst {
                self.stats.rescues += 1;
                let at_risk = current.is_none_or(|c| {
                    let deadline = c.expires_at - deadline_margin(&self.p.rules);
                    budget_slot(&before, budget) > deadline
                });
                assert!(
                    at_risk,
                    "invariant 4: group {gi} went over the budget at {now} with time to wait"
                );
                assert!(
                    own_last.is_none_or(|l| now - l >= Duration::minutes(1)),
                    "invariant 4: group {gi} went over the budget again at {now} after {own_last:?}"
                );
                assert!(
                    repeats_before < 2 * budget,
                    "invariant 4: a rescue at {now} with {repeats_before} repeat attempts in the hour"
                );
            }
        }
        self.group_attempts.push((gi, now));
        // The hard ceiling: twice the budget in repeats, so twice the
        // budget plus one burst per group in all.
        let in_hour = before.len() + 1;
        assert!(
            in_hour <= 2 * budget + self.groups.len(),
            "invariant 4: {in_hour} attempts in the hour ending {now}"
        );
        let repeats_now = repeats(
            self.group_attempts
                .iter()
                .filter(|(_, t)| *t > hour_ago)
                .map(|(g, _)| *g),
        );
        assert!(
            repeats_now <= 2 * budget,
            "invariant 4: {repeats_now} repeat attempts in the hour ending {now}"
        );
        // Invariant 3: room on the channel as far as anyone could know it:
        // our recorded tokens LINE holds, the foreign ones the last reconcile
        // listed, and every token from an attempt whose outcome is unknown.
        let recorded_at_line = self
            .ours
            .iter()
            .filter(|o| o.at_line && now < o.rec.expires_at)
            .count();
        let listed = self
            .others
            .iter()
            .filter(|o| o.listed && now < o.expires_at)
            .count();
        let knowable = recorded_at_line + listed + self.lost as usize;
        assert!(
            knowable < self.p.rules.channel_token_cap as usize,
            "invariant 3: issue with {knowable} known tokens on a channel capped at {}",
            self.p.rules.channel_token_cap
        );
        // A stale count only while the listing fails (the last count
        // stands; LINE refuses a 31st token itself).
        let age = now - self.last_reconcile_at.expect("issue without any reconcile");
        assert!(
            age <= self.p.rules.reconcile_max_age_before_issue
                || self
                    .reconcile_retry
                    .as_ref()
                    .is_some_and(|r| r.not_before > now),
            "issue on a reconcile {age} old"
        );

        if let Some(current) = view.current(now)
            && reason == IssueReason::Due
        {
            // Computed here from the rules, not by the policy's own helper,
            // so a wrong due time in the policy cannot agree with itself.
            let jitter = stable_jitter(
                &view.channel,
                &view.group,
                JitterPurpose::Rotation,
                self.p.rules.rotation_jitter,
            );
            assert!(jitter >= Duration::zero() && jitter <= self.p.rules.rotation_jitter);
            let due = current.expires_at - self.p.rules.rotate_before - jitter;
            assert!(now >= due, "rotation at {now} before it was due at {due}");
            if self.p.faults.none() {
                assert_eq!(
                    now, due,
                    "invariant 2: rotation must start exactly at its due time"
                );
            }
            self.stats.due_issues += 1;
        }
        let line_full = self.line_count() >= self.p.rules.channel_token_cap as usize;
        if let Some((kind, asked)) = self.fail() {
            if kind == FailureKind::Transient && self.rng.chance(self.p.faults.ambiguous) {
                // The request reached LINE; the answer did not reach us.
                self.lost += 1;
                if !line_full {
                    self.others.push(Other {
                        expires_at: now + token_exp,
                        listed: false,
                    });
                }
            }
            let retry_after = asked.or_else(|| {
                self.rng
                    .chance(0.3)
                    .then(|| Duration::seconds(self.rng.between(1, 120)))
            });
            return Outcome::Failed(kind, retry_after);
        }
        if line_full {
            // LINE's 400 "maximum number of access tokens": someone issued
            // behind the last reconcile's back.
            self.stats.refused_full += 1;
            return Outcome::Failed(FailureKind::ChannelFull, None);
        }
        self.next_key += 1;
        self.ours.push(Ours {
            rec: TokenRecord {
                key_id: KeyId::new(format!("k{}", self.next_key)),
                issued_at: now,
                expires_at: now + token_exp,
                state: TokenState::Live,
                refused_at: None,
                verified_at: None,
            },
            group: gi,
            at_line: true,
        });
        // The rotator verifies every token as part of issuing it.
        self.groups[gi].last_verified_at = Some(now);
        self.stats.issues += 1;
        Outcome::Done
    }

    /// Drives the channel through [`drive`], as the rotator does, until it
    /// idles; returns when it is next due.
    fn run_channel(&mut self) -> DateTime<Utc> {
        for _round in 0..64 {
            let state = ChannelState {
                groups: self.views(),
                view: self.channel_view(),
            };
            let decision = drive(self.now, &state, &self.p.rules);
            let cv = ChannelView {
                live_ours: live_ours(self.now, &state.groups, TokenKind::V21),
                ..state.view.clone()
            };
            for (g, plan) in state.groups.iter().zip(&decision.plans) {
                check_plan(self.now, g, &cv, &self.p.rules, plan);
                self.stats.criticals += u32::from(
                    plan.alerts
                        .iter()
                        .any(|a| a.severity() == Severity::Critical),
                );
                match plan.hold {
                    Some(Hold::Capacity { .. }) => self.stats.capacity_holds += 1,
                    Some(Hold::RateLimit { .. }) => self.stats.rate_holds += 1,
                    _ => {}
                }
            }
            let (gi, plan) = match decision.next {
                Next::Idle { until } => return until,
                Next::FreeCapacity { victims, .. } => {
                    self.revoke_victims(&victims);
                    continue;
                }
                Next::Execute { group, plan } => (group, plan),
            };
            let mut outcome = Outcome::Done;
            let mut failed_step = None;
            for step in &plan.steps {
                if matches!(
                    step,
                    Step::Revoke {
                        reason: RevokeReason::MakeRoom,
                        ..
                    }
                ) {
                    self.stats.make_room += 1;
                }
                outcome = self.exec(gi, step);
                self.check_two_live();
                if !matches!(outcome, Outcome::Done) {
                    failed_step = Some(step.clone());
                    break;
                }
            }
            match outcome {
                Outcome::Failed(kind, _) if failed_step == Some(Step::Reconcile) => {
                    let u = self.rng.unit();
                    let deadline = listing_deadline(self.now, &state, &self.p.rules);
                    self.reconcile_retry = Some(RetryState::after_failure(
                        self.reconcile_retry.as_ref(),
                        self.now,
                        Failed::at(StepKind::Reconcile, kind),
                        u,
                        &self.p.rules.retry,
                        deadline,
                    ));
                }
                Outcome::Failed(FailureKind::ChannelFull, _) => {
                    self.full_until = Some(full_until(self.now, &state, &self.p.rules));
                    self.relist_needed = true;
                }
                Outcome::Failed(kind, retry_after) => {
                    let step_kind = failed_step.as_ref().map_or(StepKind::Issue, Step::kind);
                    let u = self.rng.unit();
                    let deadline = deadline(self.now, &state.groups[gi], &self.p.rules);
                    let g = &mut self.groups[gi];
                    g.retry = Some(RetryState::after_failure(
                        g.retry.as_ref(),
                        self.now,
                        Failed::at(step_kind, kind).retry_after(retry_after),
                        u,
                        &self.p.rules.retry,
                        deadline,
                    ));
                }
                // As the daemon: a success of the step that failed, or an
                // issue, ends the streak; another step's says nothing.
                Outcome::Done | Outcome::Surprise => {
                    let g = &mut self.groups[gi];
                    if g.retry
                        .as_ref()
                        .is_some_and(|r| plan.steps.iter().any(|s| r.ended_by(s.kind())))
                    {
                        g.retry = None;
                    }
                }
            }
        }
        panic!("the channel did not settle at {}", self.now);
    }

    /// The rotator's answer to a capacity hold: revoke other groups'
    /// superseded tokens. True if anything was freed.
    fn revoke_victims(&mut self, victims: &[(GroupName, KeyId)]) {
        let views = self.views();
        for (group, key) in victims {
            let gi = views.iter().position(|v| v.group == *group).unwrap();
            let current = views[gi].current(self.now).map(|c| c.key_id.clone());
            let retired = views[gi]
                .removed_at
                .is_some_and(|at| self.now >= at + self.p.rules.removal_grace);
            assert!(
                retired || current.as_ref() != Some(key),
                "capacity victim is a current token"
            );
            assert!(self.p.can_revoke);
            let i = self.record_live(key).unwrap();
            self.ours[i].at_line = false;
            self.ours[i].rec.state = TokenState::Revoked;
            self.stats.victims += 1;
            self.slot_freed();
        }
    }

    /// A slot of ours is free at LINE now, whatever its full refusal said:
    /// the daemon drops the refusal's hold on every revocation.
    fn slot_freed(&mut self) {
        self.full_until = None;
        self.relist_needed = false;
    }

    /// The world's own events between ticks.
    fn weather(&mut self) {
        let f = self.p.faults.clone();
        let now = self.now;
        if self.rng.chance(f.foreign) && self.line_count() < self.p.rules.channel_token_cap as usize
        {
            let life = self
                .rng
                .between(60_000, 2 * self.p.rules.token_lifetime.num_milliseconds());
            self.others.push(Other {
                expires_at: now + Duration::milliseconds(life),
                listed: false,
            });
        }
        if self.rng.chance(f.kill) {
            let alive: Vec<usize> = (0..self.ours.len())
                .filter(|&i| self.ours[i].at_line && self.ours[i].rec.is_live_at(now))
                .collect();
            if !alive.is_empty() {
                let i = alive[self.rng.next() as usize % alive.len()];
                self.ours[i].at_line = false;
            }
        }
        if self.rng.chance(f.operator) {
            let gi = self.rng.next() as usize % self.groups.len();
            let kind = if self.rng.chance(0.5) {
                RequestKind::Rotate
            } else {
                RequestKind::Incident
            };
            self.next_request += 1;
            self.groups[gi].requests.push(OpenRequest {
                id: self.next_request,
                kind,
                at: now,
                by: "world".to_owned(),
            });
        }
        if self.rng.chance(f.removal) {
            let gi = self.rng.next() as usize % self.groups.len();
            self.groups[gi].removed_at.get_or_insert(now);
        }
    }

    /// Invariant 2 on the happy path: every group has a token consumers can use.
    fn check_everyone_has_a_token(&self) {
        for gi in 0..self.groups.len() {
            let view = self.view(gi);
            let current = view
                .current(self.now)
                .unwrap_or_else(|| panic!("invariant 2: group {gi} has no token at {}", self.now));
            let at_line = self
                .ours
                .iter()
                .any(|o| o.rec.key_id == current.key_id && o.at_line);
            assert!(
                at_line && current.expires_at > self.now,
                "invariant 2: group {gi}'s token is dead"
            );
        }
    }

    fn run(&mut self) {
        let happy = self.p.faults.none();
        for _tick in 0..self.p.ticks {
            self.weather();
            let wake = self.run_channel().min(self.now + MAX_SLEEP);
            if happy {
                self.check_everyone_has_a_token();
            }
            let step =
                Duration::milliseconds(self.rng.between(1_000, self.p.max_step.num_milliseconds()));
            assert!(wake > self.now, "an idle plan must wake in the future");
            self.now = wake.min(self.now + step);
            // Forget what can no longer matter, to keep long runs fast.
            let (now, hour_ago) = (self.now, self.now - Duration::hours(1));
            self.ours.retain(|o| o.rec.expires_at > now);
            self.group_attempts.retain(|(_, t)| *t > hour_ago);
        }
    }
}

/// The guarantees every single plan gives, whatever the world does.
fn check_plan(now: DateTime<Utc>, g: &GroupView, c: &ChannelView, rules: &Rules, plan: &Plan) {
    if plan.steps.is_empty() {
        assert!(
            plan.wake_at > now && plan.wake_at <= now + MAX_SLEEP,
            "idle wake {} at {now}",
            plan.wake_at
        );
    } else {
        assert_eq!(
            plan.wake_at, now,
            "a plan with steps must be re-planned at once"
        );
    }
    let live = g.live_tokens(now);
    let mut revoked: Vec<&KeyId> = Vec::new();
    for (i, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Revoke { key_id, .. } => {
                assert!(g.revokes(), "revoke without the secret");
                assert!(!g.held(StepKind::Revoke, now), "revoke the streak holds");
                assert!(
                    live.iter().any(|t| t.key_id == *key_id),
                    "revoke of a token that is not live"
                );
                assert!(!revoked.contains(&key_id), "revoke planned twice");
                revoked.push(key_id);
            }
            Step::CloseRequests { ids } => {
                assert!(!ids.is_empty(), "closing no request");
            }
            Step::Verify { key_id } => {
                assert!(g.removed_at.is_none());
                assert!(!g.held(StepKind::Verify, now), "verify the streak holds");
                assert_eq!(live.first().map(|t| &t.key_id), Some(key_id));
            }
            Step::Reconcile => {
                assert!(
                    !plan.steps.iter().any(|s| matches!(s, Step::Issue { .. })),
                    "reconcile and issue together"
                );
            }
            Step::Issue {
                token_exp, reason, ..
            } => {
                assert_eq!(i, plan.steps.len() - 1, "issue must be the last step");
                assert_eq!(*token_exp, rules.token_lifetime);
                assert!(g.removed_at.is_none(), "issue for a removed group");
                assert!(
                    g.retry
                        .as_ref()
                        .is_none_or(|r| r.not_before <= now || !r.holds(StepKind::Issue)),
                    "issue before the retry time"
                );
                let remaining = live
                    .iter()
                    .filter(|t| !revoked.contains(&&t.key_id))
                    .count();
                assert!(
                    remaining <= 1,
                    "invariant 1: issue would make {} live",
                    remaining + 1
                );
                let freed = u32::try_from(revoked.len()).unwrap();
                assert!(
                    free_capacity(c, rules, freed) >= 1,
                    "invariant 3: issue with no capacity"
                );
                assert_eq!(c.lost, 0, "issue with unsettled attempts");
                // Stale only while the listing fails: the last count
                // stands then (LINE refuses a 31st token itself).
                let age = now - c.last_reconcile_at.expect("issue without a reconcile");
                assert!(
                    age <= rules.reconcile_max_age_before_issue
                        || c.reconcile_retry
                            .as_ref()
                            .is_some_and(|r| r.not_before > now),
                    "issue on a stale reconcile"
                );
                let in_hour: Vec<&(GroupName, DateTime<Utc>)> = c
                    .issues_last_hour
                    .iter()
                    .filter(|(_, t)| *t > now - Duration::hours(1))
                    .collect();
                let before: Vec<DateTime<Utc>> = in_hour.iter().map(|(_, t)| *t).collect();
                let repeats_before = repeats(in_hour.iter().map(|(g, _)| g.clone()));
                // Invariant 4: over the channel's budget only as a
                // first-start burst or a deadline rescue.
                let budget = rules.max_issues_per_hour as usize;
                let usable = live
                    .iter()
                    .find(|t| !revoked.contains(&&t.key_id) && t.refused_at.is_none());
                let burst = usable.is_none()
                    && g.issued_last_hour == 0
                    && *reason == IssueReason::NoCurrent;
                let at_risk = usable.is_none_or(|u| {
                    budget_slot(&before, budget) > u.expires_at - deadline_margin(rules)
                });
                let spaced = g
                    .last_issue_at
                    .is_none_or(|l| now - l >= Duration::minutes(1));
                assert!(
                    before.len() < budget
                        || burst
                        || (at_risk && spaced && repeats_before < 2 * budget),
                    "invariant 4: issue over the budget"
                );
            }
        }
    }
}

/// Repeat attempts among attempts by `groups` (one item per attempt, all
/// in one hour): every attempt but each group's latest, so the attempts
/// less the groups that made any.
fn repeats<G: Ord>(groups: impl Iterator<Item = G>) -> usize {
    let all: Vec<G> = groups.collect();
    let distinct: std::collections::BTreeSet<&G> = all.iter().collect();
    all.len() - distinct.len()
}

/// The safety margin before expiry (docs/design.md section 5.9), from the
/// rules, not the policy's helper.
fn deadline_margin(rules: &Rules) -> Duration {
    rules
        .deadline_margin
        .max(Duration::zero())
        .min(rules.rotate_before.max(Duration::zero()) / 4)
}

/// When one more attempt fits the budget, given the attempts in the hour:
/// once enough of them have aged out that fewer than `budget` remain.
fn budget_slot(in_hour: &[DateTime<Utc>], budget: usize) -> DateTime<Utc> {
    if in_hour.len() < budget {
        return DateTime::<Utc>::MIN_UTC;
    }
    if budget == 0 {
        return DateTime::<Utc>::MAX_UTC;
    }
    let mut sorted = in_hour.to_vec();
    sorted.sort();
    sorted[in_hour.len() - budget] + Duration::hours(1)
}

/// Rules scaled to a lifetime, with rotate_before + jitter under half of it
/// (so the previous token has expired by the next rotation).
fn scaled_rules(
    lifetime_ms: i64,
    rb_frac: f64,
    jitter_frac: f64,
    max_issues: u32,
    cap: u32,
) -> Rules {
    let ms = |f: f64| Duration::milliseconds((lifetime_ms as f64 * f) as i64);
    Rules {
        token_lifetime: Duration::milliseconds(lifetime_ms),
        rotate_before: ms(rb_frac),
        rotation_jitter: ms(jitter_frac),
        verify_interval: ms(0.2).max(Duration::seconds(10)),
        reconcile_interval: Duration::hours(1).min(ms(0.5)).max(Duration::seconds(10)),
        max_issues_per_hour: max_issues,
        channel_token_cap: cap,
        removal_grace: ms(0.25),
        ..Rules::default()
    }
}

const LIFETIMES_MS: [i64; 5] = [120_000, 900_000, 7_200_000, 86_400_000, 2_592_000_000];

fn happy_params() -> impl Strategy<Value = Params> {
    (
        0..LIFETIMES_MS.len(),
        0.1f64..0.4,
        0.0f64..0.08,
        1usize..=6,
        any::<bool>(),
        any::<u64>(),
        prop::option::of(0.0f64..0.3),
    )
        .prop_map(|(li, rb, jitter, groups, can_revoke, seed, rpa)| {
            let lifetime = LIFETIMES_MS[li];
            let mut rules = scaled_rules(lifetime, rb, jitter, 10_000, 30);
            rules.revoke_previous_after =
                rpa.map(|f| Duration::milliseconds((lifetime as f64 * f) as i64));
            // Enough ticks for three rotations even when sleeps are capped at an hour.
            let ticks = usize::try_from((3 * lifetime / 3_600_000).clamp(60, 2_400)).unwrap();
            Params {
                max_step: rules.rotate_before.min(Duration::hours(2)),
                rules,
                groups,
                can_revoke,
                faults: Faults::default(),
                ticks,
                seed,
            }
        })
}

fn hostile_params() -> impl Strategy<Value = Params> {
    (
        0..3usize,
        0.1f64..0.6,
        0.0f64..0.1,
        1usize..=8,
        any::<bool>(),
        any::<u64>(),
        (1u32..12, 2u32..=30),
        (
            0.0f64..0.4,
            0.0f64..1.0,
            0.0f64..0.5,
            0.0f64..0.3,
            0.0f64..0.05,
            0.0f64..0.05,
            0.0f64..0.01,
        ),
    )
        .prop_map(
            |(li, rb, jitter, groups, can_revoke, seed, (max_issues, cap), f)| {
                let lifetime = LIFETIMES_MS[li];
                let rb = rb.min(0.9 - jitter);
                Params {
                    rules: scaled_rules(lifetime, rb, jitter, max_issues, cap),
                    groups,
                    can_revoke,
                    faults: Faults {
                        fail: f.0,
                        permanent: f.1,
                        ambiguous: f.2,
                        foreign: f.3,
                        kill: f.4,
                        operator: f.5,
                        removal: f.6,
                    },
                    ticks: 300,
                    max_step: Duration::milliseconds(lifetime / 4),
                    seed,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Invariants 1 to 4 with LINE always answering: every group keeps a
    /// live token and rotates exactly at its due time.
    #[test]
    fn happy_world_keeps_every_group_served(p in happy_params()) {
        let mut w = World::new(p);
        w.run();
        prop_assert!(w.stats.issues as usize >= w.groups.len());
    }

    /// Invariants 1, 3 and 4 (and "never rotate early") under failures,
    /// ambiguous answers, foreign issuers, console revocations, operator
    /// requests and removals.
    #[test]
    fn hostile_world_never_breaks_the_limits(p in hostile_params()) {
        let mut w = World::new(p);
        w.run();
    }

    /// Whatever the views say, a plan never panics and keeps its promises.
    #[test]
    fn arbitrary_views_give_sound_plans(
        tokens in prop::collection::vec((0i64..200, 1i64..200, 0u8..4), 0..6),
        now in 0i64..300,
        can_revoke in any::<bool>(),
        removed in prop::option::of(0i64..300),
        rotate in prop::option::of(0i64..300),
        incident in prop::option::of(0i64..300),
        verified in prop::option::of(0i64..300),
        retry in prop::option::of((1u32..20, any::<bool>(), 0i64..400)),
        (live_ours, foreign, lost) in (0u32..40, 0u32..40, 0u32..3),
        attempts in prop::collection::vec(-4000i64..300, 0..10),
        reconciled in prop::option::of(-4000i64..300),
        (lifetime, rb, jitter, max_issues, cap, rpa) in (1i64..200, 1i64..200, 0i64..50, 0u32..8, 0u32..32, prop::option::of(0i64..100)),
    ) {
        let t = |s: i64| DateTime::from_timestamp(1_750_000_000 + s, 0).unwrap();
        let states = [TokenState::Live, TokenState::Revoked, TokenState::Expired, TokenState::Gone];
        let g = GroupView {
            tokens: tokens
                .iter()
                .enumerate()
                .map(|(i, &(issued, life, state))| TokenRecord {
                    key_id: KeyId::new(format!("k{i}")),
                    issued_at: t(issued),
                    expires_at: t(issued + life),
                    state: states[usize::from(state)],
                    refused_at: None,
                    verified_at: None,
                })
                .collect(),
            last_verified_at: verified.map(t),
            removed_at: removed.map(t),
            requests: rotate
                .map(|at| (RequestKind::Rotate, at))
                .into_iter()
                .chain(incident.map(|at| (RequestKind::Incident, at)))
                .enumerate()
                .map(|(i, (kind, at))| OpenRequest {
                    id: i64::try_from(i).unwrap(),
                    kind,
                    at: t(at),
                    by: "test".to_owned(),
                })
                .collect(),
            retry: retry.map(|(failures, permanent, at)| RetryState {
                failures,
                kind: if permanent { FailureKind::Permanent } else { FailureKind::Transient },
                step: Some(StepKind::Issue),
                not_before: t(at),
            }),
            ..GroupView::new(ChannelId::new("1"), GroupName::new("g"), can_revoke)
        };
        let c = ChannelView {
            live_ours: live_ours.max(u32::try_from(g.live_tokens(t(now)).len()).unwrap()),
            foreign,
            lost,
            issues_last_hour: attempts
                .into_iter()
                .map(|at| (GroupName::new("other"), t(at)))
                .collect(),
            last_reconcile_at: reconciled.map(t),
            ..ChannelView::default()
        };
        let rules = Rules {
            token_lifetime: Duration::seconds(lifetime),
            rotate_before: Duration::seconds(rb),
            rotation_jitter: Duration::seconds(jitter),
            verify_interval: Duration::seconds(lifetime / 3),
            reconcile_interval: Duration::seconds(lifetime / 2),
            revoke_previous_after: rpa.map(Duration::seconds),
            max_issues_per_hour: max_issues,
            channel_token_cap: cap,
            ..Rules::default()
        };
        let plan = plan_group(t(now), &g, &c, &rules);
        check_plan(t(now), &g, &c, &rules, &plan);
    }
}

/// Guards the property tests against vacuity: across a few fixed seeds of a
/// small, crowded, failing channel, every path the invariants are about is
/// actually taken.
#[test]
fn the_hostile_world_exercises_every_path() {
    let mut total = Stats::default();
    for seed in 0..16 {
        let p = Params {
            rules: scaled_rules(7_200_000, 0.45, 0.05, 6, 8),
            groups: 4,
            can_revoke: seed % 4 != 0,
            faults: Faults {
                fail: 0.15,
                permanent: 0.2,
                ambiguous: 0.5,
                foreign: 0.2,
                kill: 0.02,
                operator: 0.03,
                removal: 0.003,
            },
            ticks: 400,
            max_step: Duration::minutes(10),
            seed,
        };
        let mut w = World::new(p);
        w.run();
        let s = w.stats;
        total.issues += s.issues;
        total.due_issues += s.due_issues;
        total.failures += s.failures;
        total.rate_limited += s.rate_limited;
        total.capacity_holds += s.capacity_holds;
        total.rate_holds += s.rate_holds;
        total.victims += s.victims;
        total.make_room += s.make_room;
        total.rescues += s.rescues;
        total.refused_full += s.refused_full;
        total.criticals += s.criticals;
    }
    let t = total;
    for (name, n) in [
        ("issues", t.issues),
        ("due issues", t.due_issues),
        ("failures", t.failures),
        ("429s", t.rate_limited),
        ("capacity holds", t.capacity_holds),
        ("rate holds", t.rate_holds),
        ("capacity victims", t.victims),
        ("make-room revokes", t.make_room),
        ("over-budget rescues", t.rescues),
        ("issues LINE refused as full", t.refused_full),
        ("critical alerts", t.criticals),
    ] {
        assert!(n > 0, "no {name} in {t:?}");
    }
}

/// As the store counts them (`Store::expired_since_listing`): our v2.1
/// tokens that were live at `listed` (issued by then, expiring after it)
/// and have expired by `now`, unless revoked or found gone since.
fn expired_since(listed: DateTime<Utc>, now: DateTime<Utc>, groups: &[GroupView]) -> u32 {
    let n = groups
        .iter()
        .flat_map(|g| &g.tokens)
        .filter(|t| t.kind() == TokenKind::V21)
        .filter(|t| matches!(t.state, TokenState::Live | TokenState::Expired))
        .filter(|t| t.issued_at <= listed && listed < t.expires_at && t.expires_at <= now)
        .count();
    u32::try_from(n).unwrap_or(u32::MAX)
}
