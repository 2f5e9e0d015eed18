//! Issue rounds: which groups of a channel are decided together.
//!
//! # Why
//!
//! The driver ([`drive`]) names one thing to do, and the rotator reads the
//! channel's state again after each. When many groups of a channel need a
//! token at once (a first start, a restart after an outage, groups added
//! together), that is one state read and two store commits per token, and
//! at bootstrap they cost about as much CPU as the RSA signature does. An
//! issue round asks the driver again as if each issue it named had
//! succeeded, and gathers the lone v2.1 issues it names one after another.
//! The rotator still carries them out one request at a time, each token
//! stored before the next is asked for, but reads the state once for the
//! round and records each answer in the store job that journals the next
//! intent.

//! # Why it is safe
//!
//! Each group of the round is one the driver would have issued next, at
//! the instant the round was decided, had every earlier issue of the round
//! succeeded: the round is what the one-at-a-time loop would do then. The
//! rotator stops a round at its first member that does not simply succeed
//! (the next round reads the failure from the store), so every member sent
//! was decided on a true picture of the channel. Time passing only loosens
//! what the driver allows (expiries come, the hour's issues age out, holds
//! end), except the key-ID listing, which must be fresh enough to issue on
//! and is due again at its interval: [`round_holds_until`] is when the
//! rotator stops sending a round's members.
//!
//! Only lone v2.1 issues join: a plan with a listing, verify or revoke
//! before its issue runs on its own (each of those changes what the next
//! decision reads), and short-lived issues stay one at a time, because a
//! short-lived issue can evict the channel's oldest short-lived token and
//! the driver reads the order of their issue and verify times to find out
//! which one.

use chrono::{DateTime, Duration, Utc};

use super::channel::{ChannelState, Next, drive};
use super::plan::{Plan, Step, listing_due_at, listing_fresh_until};
use super::rules::{Rules, SHORT_LIVED_LIFETIME};
use super::time;
use crate::domain::{KeyId, TokenKind, TokenRecord};

/// The groups whose issues are decided in one round with the driver's own
/// choice (`first`, whose plan is `plan`), at most `max` in all, in the
/// order the driver would have issued them: `first` alone unless its plan
/// is a lone v2.1 issue.
pub fn issue_round(
    now: DateTime<Utc>,
    state: &ChannelState,
    rules: &Rules,
    first: usize,
    plan: &Plan,
    max: usize,
) -> Vec<(usize, Plan)> {
    let mut round = vec![(first, plan.clone())];
    if !joins_a_round(state, first, plan) {
        return round;
    }
    let mut imagined = state.clone();
    let mut n = 0_u32;
    assume_issued(
        &mut imagined,
        first,
        now,
        token_exp(plan),
        rules,
        imagined_key(&mut n),
    );
    while round.len() < max {
        let Next::Execute { group, plan } = drive(now, &imagined, rules).next else {
            break;
        };
        if round.iter().any(|(g, _)| *g == group) || !joins_a_round(&imagined, group, &plan) {
            break;
        }
        assume_issued(
            &mut imagined,
            group,
            now,
            token_exp(&plan),
            rules,
            imagined_key(&mut n),
        );
        round.push((group, plan));
    }
    round
}

/// Until when the members of an issue round decided on `state` may be
/// sent: while the listing they were decided on is fresh enough to issue
/// on (`reconcile_max_age_before_issue`) and not yet due again
/// (`reconcile_interval`). Without a listing, never (a member needs one).
pub fn round_holds_until(state: &ChannelState, rules: &Rules) -> DateTime<Utc> {
    let Some(at) = state.view.last_reconcile_at else {
        return DateTime::<Utc>::MIN_UTC;
    };
    listing_fresh_until(at, rules).min(listing_due_at(at, rules))
}

/// True when `plan` is a single v2.1 issue for `state.groups[group]`.
fn joins_a_round(state: &ChannelState, group: usize, plan: &Plan) -> bool {
    matches!(plan.steps.as_slice(), [Step::Issue { .. }])
        && state
            .groups
            .get(group)
            .is_some_and(|g| g.kind == TokenKind::V21)
}

/// The lifetime a plan's issue asks for (zero: the rules' default).
fn token_exp(plan: &Plan) -> Duration {
    plan.steps
        .iter()
        .find_map(|s| match s {
            Step::Issue { token_exp, .. } => Some(*token_exp),
            _ => None,
        })
        .unwrap_or_else(Duration::zero)
}

/// A key ID no stored token has: only the round's imagined state holds it.
fn imagined_key(n: &mut u32) -> KeyId {
    *n += 1;
    KeyId::new(format!("(imagined issue {n})"))
}

/// Changes `state` as a successful issue for `state.groups[i]` at `now`,
/// asking for `token_exp` (zero: the rules' lifetime), would: a new live
/// token `key_id`, verified
/// as it was issued (the rotator verifies each new token as part of its
/// issue), counted in the channel's and the group's hourly attempts, and
/// the group's open requests carried out. What the forecast imagines for
/// every issue, and an issue round for each of its members. Returns the
/// token, or `None` when there is no group `i`.
pub fn assume_issued(
    state: &mut ChannelState,
    i: usize,
    now: DateTime<Utc>,
    token_exp: Duration,
    rules: &Rules,
    key_id: KeyId,
) -> Option<TokenRecord> {
    let g = state.groups.get_mut(i)?;
    let lifetime = match g.kind {
        TokenKind::ShortLived => SHORT_LIVED_LIFETIME,
        TokenKind::V21 if token_exp > Duration::zero() => token_exp,
        TokenKind::V21 => rules.token_lifetime,
    };
    let token = TokenRecord {
        verified_at: Some(now),
        ..TokenRecord::live(key_id, now, time::add(now, lifetime))
    };
    g.issued_last_hour = g.issued_last_hour.saturating_add(1);
    g.last_issue_at = Some(now);
    g.tokens.push(token.clone());
    g.last_verified_at = Some(now);
    g.requests.clear();
    let name = g.group.clone();
    state.view.issues_last_hour.push((name, now));
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ChannelId, GroupName};
    use crate::policy::{ChannelView, GroupView, capacity::live_ours};

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn rules() -> Rules {
        Rules {
            max_issues_per_hour: 100,
            ..Rules::default()
        }
    }

    fn channel(groups: usize, listed_foreign: u32) -> ChannelState {
        ChannelState {
            groups: (0..groups)
                .map(|i| {
                    GroupView::new(
                        ChannelId::new("c1"),
                        GroupName::new(format!("g{i:02}")),
                        true,
                    )
                })
                .collect(),
            view: ChannelView {
                last_reconcile_at: Some(t0()),
                foreign: listed_foreign,
                ..ChannelView::default()
            },
        }
    }

    fn first(state: &ChannelState, rules: &Rules) -> (usize, Plan) {
        match drive(t0(), state, rules).next {
            Next::Execute { group, plan } => (group, plan),
            other => panic!("expected an issue, got {other:?}"),
        }
    }

    /// The one-at-a-time loop with every issue succeeding: the groups it
    /// issues, in order, until the driver names anything but a lone issue.
    fn one_at_a_time(mut state: ChannelState, rules: &Rules, max: usize) -> Vec<usize> {
        let mut issued = Vec::new();
        while issued.len() < max {
            let Next::Execute { group, plan } = drive(t0(), &state, rules).next else {
                break;
            };
            if !joins_a_round(&state, group, &plan) || issued.contains(&group) {
                break;
            }
            let key = KeyId::new(format!("k{}", issued.len()));
            assume_issued(&mut state, group, t0(), token_exp(&plan), rules, key);
            issued.push(group);
        }
        issued
    }

    #[test]
    fn a_first_start_issues_every_group_of_the_channel_in_one_round() {
        let rules = rules();
        let state = channel(15, 0);
        let (g, plan) = first(&state, &rules);
        let round = issue_round(t0(), &state, &rules, g, &plan, 64);
        let groups: Vec<usize> = round.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, (0..15).collect::<Vec<_>>());
        assert_eq!(groups, one_at_a_time(state, &rules, 64));
    }

    #[test]
    fn a_round_stops_at_its_size() {
        let rules = rules();
        let state = channel(15, 0);
        let (g, plan) = first(&state, &rules);
        assert_eq!(issue_round(t0(), &state, &rules, g, &plan, 4).len(), 4);
        assert_eq!(issue_round(t0(), &state, &rules, g, &plan, 1).len(), 1);
    }

    /// 27 foreign tokens leave room for 3: the round takes 3, as the loop
    /// would, and never makes the channel's count pass 30.
    #[test]
    fn a_near_full_channel_takes_only_the_room_it_has() {
        let rules = rules();
        let state = channel(15, 27);
        let (g, plan) = first(&state, &rules);
        let round = issue_round(t0(), &state, &rules, g, &plan, 64);
        assert_eq!(round.len(), 3, "{round:?}");
        assert_eq!(
            round.iter().map(|(g, _)| *g).collect::<Vec<_>>(),
            one_at_a_time(state, &rules, 64)
        );
    }

    /// The hourly budget binds the round as it binds the loop: with the
    /// budget spent, the groups whose rotation is due wait, and only the
    /// groups without a token and without an attempt in the hour (the
    /// first-start burst) join.
    #[test]
    fn a_spent_budget_lets_only_the_first_start_burst_join() {
        let rules = Rules {
            max_issues_per_hour: 2,
            ..Rules::default()
        };
        let mut state = channel(6, 0);
        state.view.issues_last_hour =
            vec![(GroupName::new("other"), t0() - Duration::minutes(5)); 2];
        // Three groups hold a token whose rotation is due, days before its
        // expiry: no rescue over the budget for them.
        let issued = t0() - rules.token_lifetime + rules.rotate_before - Duration::hours(1);
        for (i, g) in state.groups[..3].iter_mut().enumerate() {
            g.tokens.push(TokenRecord::live(
                KeyId::new(format!("old{i}")),
                issued,
                issued + rules.token_lifetime,
            ));
            g.last_verified_at = Some(t0());
        }
        let (g, plan) = first(&state, &rules);
        let round = issue_round(t0(), &state, &rules, g, &plan, 64);
        let groups: Vec<usize> = round.iter().map(|(g, _)| *g).collect();
        assert_eq!(groups, [3, 4, 5]);
        assert_eq!(groups, one_at_a_time(state.clone(), &rules, 64));
    }

    /// A plan that lists the key IDs first runs alone: the listing changes
    /// what every later decision reads.
    #[test]
    fn an_issue_behind_a_listing_runs_alone() {
        let rules = rules();
        let mut state = channel(3, 0);
        state.view.last_reconcile_at = None;
        let (g, plan) = first(&state, &rules);
        assert!(
            !matches!(plan.steps.as_slice(), [Step::Issue { .. }]),
            "{plan:?}"
        );
        assert_eq!(issue_round(t0(), &state, &rules, g, &plan, 64).len(), 1);
    }

    #[test]
    fn short_lived_issues_run_alone() {
        let rules = rules();
        let mut state = channel(3, 0);
        for g in &mut state.groups {
            g.kind = TokenKind::ShortLived;
        }
        let (g, plan) = first(&state, &rules);
        assert_eq!(issue_round(t0(), &state, &rules, g, &plan, 64).len(), 1);
    }

    #[test]
    fn a_round_holds_while_its_listing_is_fresh_and_not_due() {
        let rules = rules();
        let state = channel(2, 0);
        assert_eq!(
            round_holds_until(&state, &rules),
            t0() + rules.reconcile_max_age_before_issue
        );
        let often = Rules {
            reconcile_interval: Duration::minutes(2),
            ..rules.clone()
        };
        assert_eq!(
            round_holds_until(&state, &often),
            t0() + Duration::minutes(2)
        );
        let mut unlisted = state;
        unlisted.view.last_reconcile_at = None;
        assert_eq!(
            round_holds_until(&unlisted, &rules),
            DateTime::<Utc>::MIN_UTC
        );
    }

    #[test]
    fn an_assumed_issue_is_a_live_verified_token_counted_in_the_hour() {
        let rules = rules();
        let mut state = channel(2, 0);
        let (g, plan) = first(&state, &rules);
        let token = assume_issued(
            &mut state,
            g,
            t0(),
            token_exp(&plan),
            &rules,
            KeyId::new("k"),
        );
        let token = token.unwrap();
        assert_eq!(token.expires_at, t0() + rules.token_lifetime);
        assert_eq!(token.verified_at, Some(t0()));
        assert_eq!(state.groups[g].issued_last_hour, 1);
        assert_eq!(
            state.view.issues_last_hour,
            vec![(state.groups[g].group.clone(), t0())]
        );
        assert_eq!(live_ours(t0(), &state.groups, TokenKind::V21), 1);
    }
}
