//! Which channels an instance tries to lead: rendezvous (highest random
//! weight) hashing over the instances alive, plus the rule that any
//! instance takes a lease that stayed expired.
//!
//! Every instance computes the same answer from the same inputs (the
//! instance IDs alive and a channel ID), with no coordination: each
//! channel goes to the alive instance with the highest
//! `score(instance, channel)`. That is balanced in expectation (each
//! instance wins a channel with equal chance), and moves little: when an
//! instance leaves, only its channels move; when one joins, only channels
//! it now wins move, all to it.
//!
//! [`lease_action`] turns that into what an instance does about one
//! channel's lease:
//!
//! - its own grant: keep it, or release it (a handover, between steps with
//!   nothing in flight) when another alive instance is preferred;
//! - a valid grant of another: wait;
//! - no row: acquire (the database picks one winner);
//! - an expired grant: the preferred instance acquires at once, any other
//!   once it has stayed expired for `takeover_grace`, so the channels of a
//!   dead instance are taken even when the list of the alive is stale.
//!
//! The hash is FNV-1a with a 64-bit finaliser, the same on every machine
//! and Rust release, so two builds in a rolling upgrade agree.
//!
//! Pure; depends on `domain`, [`super::lease`], `policy::jitter`'s FNV-1a
//! and chrono.

use chrono::{DateTime, Duration, Utc};

use super::lease::{InstanceId, Lease};
use crate::domain::ChannelId;
use crate::policy::jitter::fnv1a64;

/// The weight of `instance` for `channel`; the highest alive weight leads.
pub fn score(instance: &InstanceId, channel: &ChannelId) -> u64 {
    let mut bytes = Vec::with_capacity(instance.as_str().len() + channel.as_str().len() + 1);
    bytes.extend_from_slice(instance.as_str().as_bytes());
    // A byte no ID contains keeps ("ab", "c") and ("a", "bc") apart.
    bytes.push(0xff);
    bytes.extend_from_slice(channel.as_str().as_bytes());
    finalise(fnv1a64(&bytes))
}

/// splitmix64's finaliser: FNV-1a alone leaves IDs that differ in their
/// last byte close together in the high bits.
fn finalise(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The instance among `alive` that should lead `channel`: the highest
/// score, ties to the smaller ID. `None` when `alive` is empty.
pub fn preferred<'a>(alive: &'a [InstanceId], channel: &ChannelId) -> Option<&'a InstanceId> {
    alive
        .iter()
        .max_by(|a, b| score(a, channel).cmp(&score(b, channel)).then(b.cmp(a)))
}

/// The channels of `channels` that `me` should lead among `alive` (`me`
/// counts as alive whether listed or not), in the order given.
pub fn preferred_channels(
    me: &InstanceId,
    alive: &[InstanceId],
    channels: &[ChannelId],
) -> Vec<ChannelId> {
    let everyone = with_me(me, alive);
    channels
        .iter()
        .filter(|c| preferred(&everyone, c) == Some(me))
        .cloned()
        .collect()
}

fn with_me(me: &InstanceId, alive: &[InstanceId]) -> Vec<InstanceId> {
    let mut everyone = alive.to_vec();
    if !everyone.contains(me) {
        everyone.push(me.clone());
    }
    everyone
}

/// What an instance does about one channel's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseAction {
    /// Hold on to its grant (renewing as due).
    Keep,
    /// Hand the channel over: release the grant between steps, with no
    /// LINE call in flight.
    Release,
    /// Try to acquire the lease.
    Acquire,
    /// Leave it to another instance.
    Wait,
}

/// What `me` does about `channel`'s lease, `row` as read at `db_now`.
pub fn lease_action(
    me: &InstanceId,
    alive: &[InstanceId],
    channel: &ChannelId,
    row: Option<&Lease>,
    db_now: DateTime<Utc>,
    takeover_grace: Duration,
) -> LeaseAction {
    let everyone = with_me(me, alive);
    let mine = preferred(&everyone, channel) == Some(me);
    match row {
        None => LeaseAction::Acquire,
        Some(l) if l.is_valid_at(db_now) && l.holder == *me => {
            if mine {
                LeaseAction::Keep
            } else {
                LeaseAction::Release
            }
        }
        Some(l) if l.is_valid_at(db_now) => LeaseAction::Wait,
        Some(_) if mine => LeaseAction::Acquire,
        Some(l) => {
            let stale = l
                .valid_until
                .checked_add_signed(takeover_grace.max(Duration::zero()))
                .is_some_and(|from| db_now >= from);
            if stale {
                LeaseAction::Acquire
            } else {
                LeaseAction::Wait
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ha::lease::Epoch;

    fn ids(names: &[&str]) -> Vec<InstanceId> {
        names.iter().map(|n| InstanceId::new(*n)).collect()
    }

    fn channels(n: usize) -> Vec<ChannelId> {
        (0..n)
            .map(|i| ChannelId::new(format!("{}", 1_650_000_000 + i)))
            .collect()
    }

    fn owner_map(alive: &[InstanceId], chans: &[ChannelId]) -> Vec<InstanceId> {
        chans
            .iter()
            .map(|c| preferred(alive, c).unwrap().clone())
            .collect()
    }

    #[test]
    fn every_channel_has_one_preferred_leader_and_the_split_is_balanced() {
        let alive = ids(&["web-1:101", "web-2:101", "web-3:101"]);
        let chans = channels(600);
        let mut counts = [0usize; 3];
        for c in &chans {
            let leaders: Vec<&InstanceId> = alive
                .iter()
                .filter(|me| preferred_channels(me, &alive, std::slice::from_ref(c)).len() == 1)
                .collect();
            assert_eq!(leaders.len(), 1, "channel {c}");
            counts[alive.iter().position(|a| a == leaders[0]).unwrap()] += 1;
        }
        // 200 each in expectation; a fair split stays well within ±25 %.
        for n in counts {
            assert!((150..=250).contains(&n), "{counts:?}");
        }
    }

    #[test]
    fn the_answer_does_not_depend_on_the_order_of_the_alive() {
        let chans = channels(50);
        let a = ids(&["x", "y", "z"]);
        let b = ids(&["z", "x", "y"]);
        assert_eq!(owner_map(&a, &chans), owner_map(&b, &chans));
        assert_eq!(preferred(&[], &chans[0]), None);
    }

    #[test]
    fn the_scores_are_pinned_so_every_build_agrees() {
        // Changing the hash would split channels differently between two
        // builds in a rolling upgrade: this pins it.
        assert_eq!(
            score(&InstanceId::new("web-1:101"), &ChannelId::new("1650000000")),
            0xc112_41b7_7341_d635
        );
        assert_ne!(
            score(&InstanceId::new("ab"), &ChannelId::new("c")),
            score(&InstanceId::new("a"), &ChannelId::new("bc"))
        );
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(
            score(&InstanceId::new("a"), &ChannelId::new("1")),
            finalise(fnv1a64(b"a\xff1"))
        );
    }

    fn row(holder: &str, until: i64) -> Lease {
        Lease {
            holder: InstanceId::new(holder),
            epoch: Epoch(2),
            valid_until: at(until),
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn lease_actions() {
        let alive = ids(&["a", "b"]);
        // A channel "a" is preferred for, and one "b" is.
        let chans = channels(40);
        let for_a = chans
            .iter()
            .find(|c| preferred(&alive, c) == Some(&alive[0]))
            .unwrap();
        let for_b = chans
            .iter()
            .find(|c| preferred(&alive, c) == Some(&alive[1]))
            .unwrap();
        let a = &alive[0];
        let grace = Duration::seconds(5);
        // (channel, row, db now, expected for "a")
        let cases = [
            (for_a, None, 0, LeaseAction::Acquire),
            (for_b, None, 0, LeaseAction::Acquire),
            (for_a, Some(row("a", 30)), 0, LeaseAction::Keep),
            (for_b, Some(row("a", 30)), 0, LeaseAction::Release),
            (for_a, Some(row("b", 30)), 0, LeaseAction::Wait),
            (for_a, Some(row("b", 30)), 30, LeaseAction::Acquire),
            (for_b, Some(row("b", 30)), 30, LeaseAction::Wait),
            (for_b, Some(row("b", 30)), 34, LeaseAction::Wait),
            // Expired for the grace: anyone takes it.
            (for_b, Some(row("b", 30)), 35, LeaseAction::Acquire),
            // Its own expired grant: acquired anew like anyone's.
            (for_a, Some(row("a", 30)), 31, LeaseAction::Acquire),
        ];
        for (c, r, now, expected) in cases {
            assert_eq!(
                lease_action(a, &alive, c, r.as_ref(), at(now), grace),
                expected,
                "channel {c}, {r:?} at {now}"
            );
        }
        // Alone (b dead and gone from the list): a is preferred everywhere.
        assert_eq!(
            lease_action(a, &[], for_b, Some(&row("b", 30)), at(30), grace),
            LeaseAction::Acquire
        );
    }

    fn id_list() -> impl Strategy<Value = Vec<InstanceId>> {
        prop::collection::btree_set("[a-z]{1,6}(:[0-9]{1,5})?", 1..6)
            .prop_map(|set| set.into_iter().map(InstanceId::new).collect())
    }

    proptest! {
        /// Minimal movement: an instance joining takes channels only for
        /// itself; one leaving gives up only its own.
        #[test]
        fn a_join_or_a_leave_moves_only_the_channels_it_must(
            alive in id_list(),
            newcomer in "[A-Z]{1,6}",
            n in 1usize..120,
        ) {
            let chans = channels(n);
            let before = owner_map(&alive, &chans);
            let newcomer = InstanceId::new(newcomer);
            let mut joined = alive.clone();
            joined.push(newcomer.clone());
            let after = owner_map(&joined, &chans);
            for (b, a) in before.iter().zip(&after) {
                prop_assert!(a == b || *a == newcomer, "{b} -> {a}");
            }
            // Leaving again restores the old map exactly.
            prop_assert_eq!(owner_map(&alive, &chans), before.clone());
            if alive.len() > 1 {
                let gone = alive[0].clone();
                let rest: Vec<InstanceId> = alive[1..].to_vec();
                let after = owner_map(&rest, &chans);
                for (b, a) in before.iter().zip(&after) {
                    prop_assert!(*b == gone || a == b, "{b} -> {a}");
                }
            }
        }
    }
}
