//! Tokens a takeover may leave behind, and what each instance decides
//! about them.
//!
//! LINE cannot check our fencing token, so a leader that lost its grant
//! (paused past it, cut off from the database) can still get one LINE call
//! through (docs/design.md §14). These rules keep such a token from ever
//! reaching a consumer and keep it counted until it is gone:
//!
//! - [`after_issue`]: an issued token is stored and published only when
//!   the write that stores it passes the fence. Otherwise it is an
//!   **orphan**: never published, its key ID (never its value) appended to
//!   an unfenced orphan record, revoked at once when the channel secret is
//!   configured, else reported as a lost token. The result of an issue
//!   already made is always offered to the fenced store, even by an
//!   instance that stepped down meanwhile: the fence, not the local
//!   standing, says whether the grant still stood.
//! - [`classify_intent`]: a new leader reads the open intents of the
//!   channel. Its own epoch's are its own journal; an older epoch's is
//!   **possibly issued** (closed as lost with `maybe_issued`, counted
//!   against capacity and against its group's two, and a reconcile is due
//!   at once); a newer epoch's means another instance leads: step down.
//! - [`may_settle`]: a possibly-issued intent is settled as "issued
//!   nothing" only by a key-ID listing that started after the intent's
//!   assertion expired (plus [`LINE_CLOCK_ALLOWANCE`]): LINE refuses an
//!   expired assertion, and an intent is committed (fenced) before its
//!   request is sent, with the assertion it will send, so after that
//!   instant no request of the old epoch can still issue a token.
//! - [`classify_unknown_kid`]: a key ID LINE lists that the store does not
//!   know is an orphan when the orphan record names it, **lost** (ours,
//!   counted, reported; never foreign) when a possibly-issued intent could
//!   have made it, and foreign otherwise.
//!
//! Pure; depends on `domain`, [`super::lease`] and chrono.

use chrono::{DateTime, Duration, Utc};

use super::lease::{Epoch, NotHeld};
use crate::domain::{GroupName, KeyId};

/// How far LINE's clock may be ahead of the database's before a settled
/// intent could still have issued: LINE judges the assertion's `exp` by
/// its own clock. The daemon alerts at a minute of skew between the host
/// and LINE (`policy::skew`); five is a generous bound for a database
/// server kept by NTP.
pub const LINE_CLOCK_ALLOWANCE: Duration = Duration::minutes(5);

/// What becomes of a token LINE issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssuedFate {
    /// The store's fence passed and the token is committed: publish it.
    Publish,
    /// The fence failed and the write was rolled back: never publish.
    /// Record the key ID in the orphan record, and step down.
    Orphan {
        /// Revoke it at LINE now (the channel secret is configured);
        /// otherwise alert `lost_token`: it lives until it expires.
        revoke: bool,
    },
}

/// The fate of an issued token, from the fence check of the transaction
/// that stores it and whether the channel secret (needed to revoke) is
/// configured.
pub fn after_issue(fence: &Result<(), NotHeld>, can_revoke: bool) -> IssuedFate {
    match fence {
        Ok(()) => IssuedFate::Publish,
        Err(_) => IssuedFate::Orphan { revoke: can_revoke },
    }
}

/// How a leader reads an open intent of its channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntentClass {
    /// Written under the leader's own epoch: its journal, as without HA.
    Own,
    /// Written under an older epoch: its request may have issued a token
    /// nobody received. Close it as lost with `maybe_issued`, count it
    /// against the channel's capacity and its group's two, and reconcile
    /// at once.
    PossiblyIssued,
    /// Written under a newer epoch: another instance leads the channel.
    /// Step down (the fence check would refuse every write anyway).
    NewerLeader,
}

/// How the leader of `my_epoch` reads an open intent written under
/// `intent_epoch`.
pub fn classify_intent(intent_epoch: Epoch, my_epoch: Epoch) -> IntentClass {
    match intent_epoch.cmp(&my_epoch) {
        std::cmp::Ordering::Equal => IntentClass::Own,
        std::cmp::Ordering::Less => IntentClass::PossiblyIssued,
        std::cmp::Ordering::Greater => IntentClass::NewerLeader,
    }
}

/// An intent of an older epoch that may have issued a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PossiblyIssued {
    /// Its group.
    pub group: GroupName,
    /// The epoch it was written under.
    pub epoch: Epoch,
    /// When it was written (database time).
    pub started_at: DateTime<Utc>,
    /// The `exp` of the assertion its request carries (signed before the
    /// intent is committed, recorded in it, never re-signed for it).
    pub assertion_exp: DateTime<Utc>,
}

/// True when a key-ID listing that started at `listing_started_at`
/// (database time) shows every token `intent` can ever have made: LINE
/// refuses the intent's assertion after its `exp`, and the listing began
/// later than that by [`LINE_CLOCK_ALLOWANCE`]. Until then the intent stays
/// possibly issued whatever a listing shows: its request may still be on
/// its way (a paused process).
pub fn may_settle(intent: &PossiblyIssued, listing_started_at: DateTime<Utc>) -> bool {
    intent
        .assertion_exp
        .checked_add_signed(LINE_CLOCK_ALLOWANCE)
        .is_some_and(|settle_from| listing_started_at >= settle_from)
}

/// What a key ID that LINE lists but the store does not know is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnknownKid {
    /// A fenced-out leader recorded it as an orphan: ours, never
    /// published; counted until a listing no longer shows it.
    Orphan {
        /// The epoch of the leader that got it.
        epoch: Epoch,
    },
    /// Possibly made by an older epoch's request that nobody received:
    /// adopted as ours and lost (counted against capacity and against each
    /// candidate group's two, reported as `lost_token`), never foreign.
    Lost {
        /// The groups whose possibly-issued intents may have made it, in
        /// the order given, without repeats.
        candidates: Vec<GroupName>,
    },
    /// Nothing of ours explains it.
    Foreign,
}

/// What `kid`, first listed at `first_seen` (database time) and unknown to
/// the store, is, given the orphan record (key ID and epoch) and the
/// possibly-issued intents not yet settled.
pub fn classify_unknown_kid(
    kid: &KeyId,
    first_seen: DateTime<Utc>,
    orphans: &[(KeyId, Epoch)],
    unsettled: &[PossiblyIssued],
) -> UnknownKid {
    if let Some((_, epoch)) = orphans.iter().find(|(k, _)| k == kid) {
        return UnknownKid::Orphan { epoch: *epoch };
    }
    let mut candidates: Vec<GroupName> = Vec::new();
    for intent in unsettled.iter().filter(|i| i.started_at <= first_seen) {
        if !candidates.contains(&intent.group) {
            candidates.push(intent.group.clone());
        }
    }
    if candidates.is_empty() {
        UnknownKid::Foreign
    } else {
        UnknownKid::Lost { candidates }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::lease::InstanceId;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    #[test]
    fn a_token_is_published_only_when_its_store_passes_the_fence() {
        let fenced = Err(NotHeld::OtherHolder {
            holder: InstanceId::new("b"),
            epoch: Epoch(5),
        });
        for (fence, can_revoke, fate) in [
            (Ok(()), true, IssuedFate::Publish),
            (Ok(()), false, IssuedFate::Publish),
            (fenced.clone(), true, IssuedFate::Orphan { revoke: true }),
            (fenced, false, IssuedFate::Orphan { revoke: false }),
            (
                Err(NotHeld::Lapsed { valid_until: at(0) }),
                true,
                IssuedFate::Orphan { revoke: true },
            ),
        ] {
            assert_eq!(after_issue(&fence, can_revoke), fate, "{fence:?}");
        }
    }

    #[test]
    fn intents_by_epoch() {
        for (intent, mine, class) in [
            (4, 4, IntentClass::Own),
            (3, 4, IntentClass::PossiblyIssued),
            (1, 4, IntentClass::PossiblyIssued),
            (5, 4, IntentClass::NewerLeader),
        ] {
            assert_eq!(
                classify_intent(Epoch(intent), Epoch(mine)),
                class,
                "intent epoch {intent}, mine {mine}"
            );
        }
    }

    fn intent(group: &str, started: i64, exp: i64) -> PossiblyIssued {
        PossiblyIssued {
            group: GroupName::new(group),
            epoch: Epoch(2),
            started_at: at(started),
            assertion_exp: at(exp),
        }
    }

    #[test]
    fn an_intent_settles_only_after_its_assertion_expired_plus_the_allowance() {
        let i = intent("backend", 0, 600);
        for (listing, settles) in [(0, false), (600, false), (899, false), (900, true)] {
            assert_eq!(may_settle(&i, at(listing)), settles, "listing at {listing}");
        }
        let never = PossiblyIssued {
            assertion_exp: DateTime::<Utc>::MAX_UTC,
            ..i
        };
        assert!(!may_settle(&never, DateTime::<Utc>::MAX_UTC));
    }

    #[test]
    fn unknown_kids_are_orphans_lost_or_foreign() {
        let kid = KeyId::new("k1");
        let orphans = [(KeyId::new("k0"), Epoch(1)), (KeyId::new("k1"), Epoch(2))];
        let unsettled = [
            intent("backend", 10, 610),
            intent("batch", 20, 620),
            intent("backend", 30, 630),
            intent("vendor", 50, 650),
        ];
        assert_eq!(
            classify_unknown_kid(&kid, at(40), &orphans, &unsettled),
            UnknownKid::Orphan { epoch: Epoch(2) }
        );
        assert_eq!(
            classify_unknown_kid(&kid, at(40), &[], &unsettled),
            UnknownKid::Lost {
                candidates: vec![GroupName::new("backend"), GroupName::new("batch")]
            }
        );
        // Seen before any attempt began: nothing of ours made it.
        assert_eq!(
            classify_unknown_kid(&kid, at(5), &[], &unsettled),
            UnknownKid::Foreign
        );
        assert_eq!(
            classify_unknown_kid(&kid, at(40), &[], &[]),
            UnknownKid::Foreign
        );
    }
}
