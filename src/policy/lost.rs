//! `lost_token`: when an issue attempt that ended without an answer may
//! have left a live token of ours at LINE that nobody can hand out or
//! revoke.
//!
//! Such an attempt (a crash while LINE was asked, an answer lost after
//! LINE acted) counts against capacity until a key-ID listing settles it.
//! The listing cannot say which key ID is the lost token: any key ID first
//! seen at or after the attempt started and still listed may be it. So the
//! group's `lost_token` fires while one of its attempts is unsettled, or
//! settled with such a candidate still listed; it resolves once the
//! listing proved LINE issued nothing (no candidate) or the candidates are
//! gone (expired or revoked). Attempts older than the longest token
//! lifetime are past caring: their token, if any, has expired.
//!
//! Pure; depends on `domain` and chrono.

use chrono::{DateTime, Utc};

use super::plan::Alert;
use crate::domain::{GroupName, KeyId};

/// An issue attempt whose outcome is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownOutcome {
    /// Its intent ID (ordered like the journal).
    pub intent: i64,
    /// The group it was for.
    pub group: GroupName,
    /// When it began.
    pub started_at: DateTime<Utc>,
}

/// One `LostToken` alert per group that may have a lost token: `attempts`
/// of unknown outcome, `settled_through` the last intent a key-ID listing
/// settled, `foreign` the key IDs listed now with when each was first
/// seen. Groups in the order their first attempt appears.
pub fn lost_tokens(
    attempts: &[UnknownOutcome],
    settled_through: i64,
    foreign: &[(KeyId, DateTime<Utc>)],
) -> Vec<(GroupName, Alert)> {
    let mut out: Vec<(GroupName, Alert)> = Vec::new();
    for a in attempts {
        let unsettled = a.intent > settled_through;
        let candidates: Vec<&KeyId> = foreign
            .iter()
            .filter(|(_, first_seen)| *first_seen >= a.started_at)
            .map(|(k, _)| k)
            .collect();
        if !unsettled && candidates.is_empty() {
            continue;
        }
        let existing = out.iter_mut().find(|(g, _)| *g == a.group);
        match existing {
            Some((
                _,
                Alert::LostToken {
                    attempts,
                    unsettled: u,
                    candidates: c,
                    ..
                },
            )) => {
                *attempts += 1;
                *u += u32::from(unsettled);
                for k in candidates {
                    if !c.contains(k) {
                        c.push(k.clone());
                    }
                }
            }
            _ => out.push((
                a.group.clone(),
                Alert::LostToken {
                    attempts: 1,
                    unsettled: u32::from(unsettled),
                    since: a.started_at,
                    candidates: candidates.into_iter().cloned().collect(),
                },
            )),
        }
    }
    for (_, alert) in &mut out {
        if let Alert::LostToken { candidates, .. } = alert {
            candidates.sort();
        }
    }
    out
}

/// What a channel's listed key IDs that the store does not hold are
/// (docs/design.md §14.3): recorded orphans (ours, known by key ID), under
/// `[ha]` those an issuance of unknown outcome may have made (ours and
/// lost), and the rest, another issuer's. One rule for the alerts, the
/// metrics and `status`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unheld {
    /// Listed, not orphans, with when each was first seen: what a lost
    /// attempt's token may be ([`lost_tokens`]' candidates).
    pub candidates: Vec<(KeyId, DateTime<Utc>)>,
    /// Listed recorded orphans.
    pub orphans: Vec<KeyId>,
    /// Candidates adopted as ours and lost, sorted (empty without `[ha]`).
    pub lost: Vec<KeyId>,
}

impl Unheld {
    /// Sorts `listed` (key ID, first seen) given the channel's recorded
    /// `orphans` and its `attempts` of unknown outcome, `settled_through`
    /// the last intent a listing settled. Only with `adopt_lost` (under
    /// `[ha]`) are candidates adopted: a single instance reports them as
    /// foreign too, since another issuer's token may have appeared in the
    /// same interval.
    pub fn sort(
        listed: &[(KeyId, DateTime<Utc>)],
        orphans: &[KeyId],
        attempts: &[UnknownOutcome],
        settled_through: i64,
        adopt_lost: bool,
    ) -> Self {
        let (orphaned, candidates): (Vec<_>, Vec<_>) = listed
            .iter()
            .cloned()
            .partition(|(k, _)| orphans.contains(k));
        let mut lost: Vec<KeyId> = if adopt_lost {
            lost_tokens(attempts, settled_through, &candidates)
                .into_iter()
                .flat_map(|(_, alert)| match alert {
                    Alert::LostToken { candidates, .. } => candidates,
                    _ => Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        };
        lost.sort();
        lost.dedup();
        Self {
            candidates,
            orphans: orphaned.into_iter().map(|(k, _)| k).collect(),
            lost,
        }
    }

    /// Listed key IDs of another issuer: candidates not adopted.
    pub fn foreign(&self) -> impl Iterator<Item = &KeyId> {
        self.candidates
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !self.lost.contains(k))
    }

    /// Listed key IDs of ours that nobody holds: orphans and lost ones.
    pub fn ours(&self) -> usize {
        self.orphans.len() + self.lost.len()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Duration;

    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn attempt(intent: i64, group: &str, at: DateTime<Utc>) -> UnknownOutcome {
        UnknownOutcome {
            intent,
            group: GroupName::new(group),
            started_at: at,
        }
    }

    #[test]
    fn adopted_key_ids_are_the_candidates_of_every_group_once() {
        let crash = t0();
        let attempts = [
            attempt(7, "a", crash),
            attempt(8, "b", crash + Duration::minutes(2)),
        ];
        let listed = [
            (KeyId::new("before"), crash - Duration::seconds(1)),
            (KeyId::new("after-a"), crash + Duration::minutes(1)),
            (KeyId::new("after-b"), crash + Duration::minutes(3)),
        ];
        // "after-b" may be either group's; each key ID is adopted once.
        assert_eq!(
            Unheld::sort(&listed, &[], &attempts, 8, true).lost,
            vec![KeyId::new("after-a"), KeyId::new("after-b")]
        );
        // Nothing unknown: nothing adopted.
        assert!(Unheld::sort(&listed, &[], &[], 8, true).lost.is_empty());
    }

    #[test]
    fn an_unsettled_attempt_fires_and_a_settled_one_only_with_a_candidate_listed() {
        let crash = t0();
        let attempts = [attempt(7, "a", crash)];
        // Not yet listed: it may be a token.
        let fired = lost_tokens(&attempts, 6, &[]);
        assert_eq!(
            fired,
            vec![(
                GroupName::new("a"),
                Alert::LostToken {
                    attempts: 1,
                    unsettled: 1,
                    since: crash,
                    candidates: vec![],
                }
            )]
        );
        // Listed, and nothing new appeared: LINE issued nothing.
        let old = (KeyId::new("older"), crash - Duration::seconds(1));
        assert!(lost_tokens(&attempts, 7, std::slice::from_ref(&old)).is_empty());
        // Listed, and a key ID first seen after the attempt began is still
        // there: it may be ours.
        let new = (KeyId::new("new"), crash + Duration::minutes(1));
        let fired = lost_tokens(&attempts, 7, &[old, new]);
        assert_eq!(
            fired,
            vec![(
                GroupName::new("a"),
                Alert::LostToken {
                    attempts: 1,
                    unsettled: 0,
                    since: crash,
                    candidates: vec![KeyId::new("new")],
                }
            )]
        );
        // Once it is gone, so is the alert.
        assert!(lost_tokens(&attempts, 7, &[]).is_empty());
    }

    #[test]
    fn one_alert_per_group_with_every_attempt_and_candidate() {
        let attempts = [
            attempt(1, "a", t0()),
            attempt(2, "b", t0() + Duration::hours(1)),
            attempt(3, "a", t0() + Duration::hours(2)),
        ];
        let foreign = [
            (KeyId::new("k2"), t0() + Duration::hours(3)),
            (KeyId::new("k1"), t0() + Duration::minutes(5)),
        ];
        let fired = lost_tokens(&attempts, 2, &foreign);
        assert_eq!(fired.len(), 2);
        assert_eq!(
            fired[0],
            (
                GroupName::new("a"),
                Alert::LostToken {
                    attempts: 2,
                    unsettled: 1,
                    since: t0(),
                    candidates: vec![KeyId::new("k1"), KeyId::new("k2")],
                }
            )
        );
        assert_eq!(
            fired[1],
            (
                GroupName::new("b"),
                Alert::LostToken {
                    attempts: 1,
                    unsettled: 0,
                    since: t0() + Duration::hours(1),
                    candidates: vec![KeyId::new("k2")],
                }
            )
        );
    }
}
