//! The channel's room for one more token (invariant 3), and which of our own
//! tokens to give up when there is none.
//!
//! LINE refuses a 31st live v2.1 token on a channel, and foreign tokens count
//! too. [`free_capacity`] is the arithmetic; [`capacity_victims`] picks our
//! own superseded tokens across the channel's groups, oldest-superseded
//! first, for the rotator to revoke when a plan waits for capacity
//! ([`Hold::Capacity`](super::Hold::Capacity)).
//!
//! Depends on `crate::domain`, chrono and [`super::view`].

use chrono::{DateTime, Utc};

use super::rules::Rules;
use super::time;
use super::view::{ChannelView, GroupView};
use crate::domain::{GroupName, KeyId, TokenKind};

/// How many more tokens the channel can take, once `revoking` of our live
/// tokens are revoked: `cap - live_ours - foreign - lost + revoking`.
/// Negative when the channel is over the cap (LINE counted differently, or
/// the cap was lowered).
pub fn free_capacity(channel: &ChannelView, rules: &Rules, revoking: u32) -> i64 {
    i64::from(rules.channel_token_cap)
        - i64::from(channel.live_ours)
        - i64::from(channel.foreign)
        - i64::from(channel.lost)
        + i64::from(revoking)
}

/// The number of our live tokens of `kind` across `groups` at `now`: the
/// value for [`ChannelView::live_ours`] of that kind's pool. Tokens are
/// counted by their own kind, not their group's: a group that changed kind
/// still holds tokens of the old one in the old pool.
pub fn live_ours(now: DateTime<Utc>, groups: &[GroupView], kind: TokenKind) -> u32 {
    let n: usize = groups
        .iter()
        .map(|g| g.live(now).filter(|t| t.kind() == kind).count())
        .sum();
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Up to `needed` of our own tokens of `kind` whose revocation frees capacity
/// in that kind's pool without
/// taking any group's current token: superseded ("previous" and excess)
/// tokens, and every live token of groups removed longer than
/// `removal_grace` ago. Only groups that can revoke contribute. The token
/// superseded longest ago comes first: its consumers have had the most time
/// to switch. Ties break by group then key ID, so the choice is stable.
pub fn capacity_victims(
    now: DateTime<Utc>,
    groups: &[GroupView],
    needed: u32,
    rules: &Rules,
    kind: TokenKind,
) -> Vec<(GroupName, KeyId)> {
    let mut candidates: Vec<(DateTime<Utc>, &GroupName, &KeyId)> = Vec::new();
    for g in groups.iter().filter(|g| g.revokes()) {
        match g.removed_at {
            // Nobody should still use them: the grace is over. Rank them as
            // superseded at the removal, when their use was meant to end.
            Some(at) if now >= time::add(at, time::non_negative(rules.removal_grace)) => {
                candidates.extend(
                    g.live_tokens(now)
                        .into_iter()
                        .filter(|t| t.kind() == kind)
                        .map(|t| (at, &g.group, &t.key_id)),
                );
            }
            _ => candidates.extend(
                g.superseded(now)
                    .into_iter()
                    .filter(|(k, _)| k.kind() == kind)
                    .map(|(k, at)| (at, &g.group, k)),
            ),
        }
    }
    candidates.sort();
    candidates
        .into_iter()
        .take(usize::try_from(needed).unwrap_or(usize::MAX))
        .map(|(_, g, k)| (g.clone(), k.clone()))
        .collect()
}
