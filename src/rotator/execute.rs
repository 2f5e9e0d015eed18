//! Carrying out the driver's decisions against LINE, and recording each
//! outcome in the store.
//!
//! The order inside an issue is the heart of invariant 6: journal the
//! intent, ask LINE, verify the answer, store the token and close the intent
//! (and the operator requests it carries out) in one transaction, and only
//! then publish. A crash between any two of these leaves either nothing or
//! an open intent, which the next start reports and counts against capacity
//! until a reconcile settles it.
//!
//! How failures are recorded (each kind is decided in `classify`):
//!
//! - a failed issue, verify or revoke starts or extends the group's streak
//!   (deadline-aware backoff, see [`RetryState::after_failure`]); it ends
//!   when the step that failed (or any issue) succeeds, never because
//!   another step did;
//! - a failed key-ID listing extends the channel's listing streak, which
//!   holds only the listing and the issues that wait for it;
//! - LINE's 30-token refusal sets the channel's full hold until the next
//!   expiry LINE will honour: no streak, no half-hour wait;
//! - an answer that leaves open whether LINE issued (a timeout after
//!   sending, a 200 that breaks the contract) closes the intent as "may
//!   have issued": counted against capacity until a reconcile settles it.

use chrono::{DateTime, Duration, Utc};
use tokio_util::sync::CancellationToken;

use super::{ChannelSetup, RotationEvent, Rotator, error_chain, revoke_reason_text};
use crate::domain::{
    AccessToken, ChannelSecret, FailureKind, GroupName, KeyId, TokenKind, TokenState,
};
use crate::line::jwt::AssertionSigner;
use crate::line::{LineError, SignedAssertion, Verification};
use crate::policy::{
    self, ChannelState, Failed, GroupView, IssueReason, Plan, RetryState, RevokeReason, Rules,
    Step, StepKind,
};
use crate::snapshot::Snapshot;
use crate::store::pg::{NewOrphan, RevokeOutcome};
use crate::store::{
    EventKind, FullHold, GroupRuntime, IntentId, IssuedToken, NewEvent, ReconcileRuntime, Store,
    StoreError,
};

/// The longest lifetime a sane answer from LINE can report: its 30-day
/// maximum, plus a minute for clocks and rounding.
const MAX_SANE_EXPIRES_IN: i64 = 2_592_000 + 60;

/// Why a step failed.
#[derive(Debug)]
enum StepError {
    /// LINE failed or refused.
    Line(LineError),
    /// LINE answered, but not with what the contract promises (a token for
    /// another channel, an absurd lifetime, a fresh token verify refuses).
    Contract {
        /// What is wrong.
        what: String,
        /// How to wait before the next attempt.
        kind: FailureKind,
    },
    /// The store failed: the round stops and the channel is retried.
    Store(StoreError),
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl StepError {
    fn describe(&self) -> String {
        match self {
            Self::Line(e) => error_chain(e),
            Self::Contract { what, .. } => what.clone(),
            Self::Store(e) => error_chain(e),
        }
    }

    fn kind(&self) -> FailureKind {
        match self {
            Self::Line(e) => classify(e),
            Self::Contract { kind, .. } => *kind,
            Self::Store(_) => FailureKind::Transient,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Line(e) => e.retry_after().and_then(|d| Duration::from_std(d).ok()),
            _ => None,
        }
    }
}

/// How a LINE failure is retried. An issue whose request may have reached
/// LINE without an answer we can use "may have issued" (the client decides:
/// a 2xx that breaks the contract, a timeout or broken connection after
/// sending); everything else follows the class the client gave it.
fn classify(e: &LineError) -> FailureKind {
    if e.may_have_issued() {
        return FailureKind::MaybeIssued;
    }
    if e.is_channel_full() {
        return FailureKind::ChannelFull;
    }
    match e {
        LineError::RateLimited { .. } => FailureKind::RateLimited,
        LineError::Permanent { .. } | LineError::Assertion { .. } => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

impl Rotator {
    /// Executes `plan` for `state.groups[gi]`, stopping at the first failed
    /// step.
    ///
    /// # Errors
    /// Only store failures; LINE's are recorded and end in a backoff.
    pub(super) async fn execute(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        state: &ChannelState,
        gi: usize,
        plan: &Plan,
    ) -> Result<(), StoreError> {
        let view = &state.groups[gi];
        let group = &view.group;
        for step in &plan.steps {
            // Under `[ha]` a step that calls LINE starts only while the
            // grant has time for it (every step but closing requests).
            if !matches!(step, Step::CloseRequests { .. }) {
                self.line_allowed(&setup.id)?;
            }
            let outcome = match step {
                Step::Reconcile => self.reconcile(setup, state).await,
                Step::Revoke { key_id, reason } => {
                    self.revoke(setup, snapshot, group, key_id, *reason).await
                }
                Step::Verify { key_id } => self.verify(setup, group, key_id).await,
                Step::Issue {
                    reason,
                    token_exp,
                    closes,
                } => {
                    let job = IssueJob {
                        gi,
                        reason: *reason,
                        token_exp: *token_exp,
                        closes,
                    };
                    let outcome = self.issue_round(setup, state, &[job], None).await;
                    outcome.into_iter().flatten().next().unwrap_or(Ok(()))
                }
                Step::CloseRequests { ids } => {
                    let (now, channel, ids) = (self.clock.now(), setup.id.clone(), ids.clone());
                    self.db(move |store| store.close_requests(now, &channel, &ids, "dropped"))
                        .await
                        .map_err(StepError::Store)
                }
            };
            match outcome {
                Ok(()) => {
                    self.end_streak_if_done(setup, snapshot, group, step)
                        .await?;
                }
                Err(StepError::Store(e)) => return Err(e),
                Err(error) if *step == Step::Reconcile => {
                    return self
                        .record_listing_failure(setup, snapshot, state, error)
                        .await;
                }
                Err(error) => {
                    return self
                        .record_failure(setup, state, gi, step.kind(), error)
                        .await;
                }
            }
        }
        Ok(())
    }

    /// Ends the group's failure streak when `step` is the step that failed
    /// (or an issue, which is what every streak is ultimately about). A
    /// reconcile or another step succeeding says nothing about the failed
    /// one: ending the streak there made the backoff restart at its first
    /// step before every retry.
    async fn end_streak_if_done(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        group: &GroupName,
        step: &Step,
    ) -> Result<(), StoreError> {
        let Some((row, _)) = snapshot.groups.iter().find(|(r, _)| &r.name == group) else {
            return Ok(());
        };
        if row.runtime.consecutive_failures == 0 {
            return Ok(());
        }
        let name = step.kind().name();
        let ends = crate::snapshot::retry_from_runtime(&row.runtime)
            .is_some_and(|r| r.ended_by(step.kind()));
        if !ends {
            return Ok(());
        }
        tracing::info!(channel = %setup.id, group = %group, step = name, failures = row.runtime.consecutive_failures, "LINE answers again; failure streak over");
        let (channel, group) = (setup.id.clone(), group.clone());
        self.db(move |store| store.set_group_runtime(&channel, &group, &GroupRuntime::default()))
            .await
    }

    /// Revokes other groups' superseded tokens so `state.groups[gi]` can be
    /// issued one (docs/design.md section 4, step 2c).
    pub(super) async fn free_capacity(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        state: &ChannelState,
        gi: usize,
        victims: Vec<(GroupName, KeyId)>,
    ) -> Result<(), StoreError> {
        let group = &state.groups[gi].group;
        tracing::info!(
            channel = %setup.id,
            group = %group,
            victims = victims.len(),
            "the channel is full: revoking superseded tokens of other groups to make room"
        );
        for (owner, key_id) in victims {
            self.line_allowed(&setup.id)?;
            match self
                .revoke(setup, snapshot, &owner, &key_id, RevokeReason::FreeCapacity)
                .await
            {
                Ok(()) => {}
                Err(StepError::Store(e)) => return Err(e),
                Err(error) => {
                    let owner_index = state.groups.iter().position(|g| g.group == owner);
                    return self
                        .record_failure(
                            setup,
                            state,
                            owner_index.unwrap_or(gi),
                            StepKind::Revoke,
                            error,
                        )
                        .await;
                }
            }
        }
        Ok(())
    }

    async fn reconcile(&self, setup: &ChannelSetup, state: &ChannelState) -> Result<(), StepError> {
        // The store needs the time the list was asked for, not received: a
        // token issued after LINE built the list must not be marked gone;
        // and the newest intent at that time, which the listing settles.
        let asked_at = self.clock.now();
        let settles = {
            let channel = setup.id.clone();
            let allowance = self.rules().line_clock_allowance;
            self.db(move |store| store.settleable_through(&channel, asked_at, allowance))
                .await?
        };
        let kids = self
            .line
            .valid_key_ids(signer_of(setup)?)
            .await
            .map_err(StepError::Line)?;
        let channel = setup.id.clone();
        let report = self
            .db(move |store| store.reconcile(asked_at, &channel, &kids, settles))
            .await?;
        // Tokens the listing found past their expiry leave the sinks and
        // the token API as the round's own expiry marking makes them
        // (found in the demo: a channel whose round came after its listing
        // kept an expired token in its sinks, and printed no expiry).
        if !report.expired.is_empty() {
            tracing::info!(channel = %setup.id, key_ids = %policy::joined(&report.expired), "tokens expired");
            self.emit(RotationEvent::Expired {
                channel: setup.id.clone(),
                key_ids: report.expired.clone(),
            });
        }
        for key_id in &report.gone {
            tracing::warn!(channel = %setup.id, key_id = %key_id, "a token of ours is no longer listed by LINE: marked gone");
            self.emit(RotationEvent::Gone {
                channel: setup.id.clone(),
                key_id: key_id.clone(),
                why: "missing from LINE's list of valid key IDs".into(),
            });
        }
        for key_id in &report.new_foreign {
            if self.leadership.is_some() {
                // Under [ha] it may be a token a previous leader got and
                // lost; `lost_token` says so when an issuance could have
                // made it.
                tracing::warn!(
                    channel = %setup.id,
                    key_id = %key_id,
                    first_seen = %asked_at,
                    "LINE lists a key ID on this channel that linetokd has not stored: another issuer's token, or one a previous leader got and lost (see lost_token); it counts against the 30-token cap until it expires"
                );
            } else {
                tracing::warn!(
                    channel = %setup.id,
                    key_id = %key_id,
                    first_seen = %asked_at,
                    "foreign token: LINE lists a key ID on this channel that linetokd did not issue; it counts against the 30-token cap until it expires"
                );
            }
            self.emit(RotationEvent::ForeignSeen {
                channel: setup.id.clone(),
                key_id: key_id.clone(),
            });
        }
        tracing::debug!(channel = %setup.id, ours = report.ours_live, foreign = report.foreign_live, "reconciled with LINE");
        if report.new_foreign.is_empty() {
            self.settled_nothing(setup, state, settles).await?;
        }
        Ok(())
    }

    /// After a listing that found no key ID nobody holds and settled every
    /// attempt of the channel (through intent `settles`): LINE issued
    /// nothing for the attempts of unknown outcome, so their groups' "may
    /// have issued" streaks go on as transient ones
    /// ([`RetryState::settled_nothing`]). Reads the store only when a group
    /// has such a streak.
    async fn settled_nothing(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        settles: i64,
    ) -> Result<(), StoreError> {
        let rules = self.rules();
        let now = self.clock.now();
        let streaks: Vec<(GroupName, RetryState)> = state
            .groups
            .iter()
            .filter(|g| g.kind.is_listed() && g.unsettled_attempts > 0)
            .filter_map(|g| {
                let deadline = policy::deadline(now, g, &rules);
                let retry = g.retry.as_ref()?;
                let settled = retry.settled_nothing(now, self.jitter(), &rules.retry, deadline)?;
                Some((g.group.clone(), settled))
            })
            .collect();
        if streaks.is_empty() {
            return Ok(());
        }
        let (channel, under) = (setup.id.clone(), setup.fingerprint.clone());
        let resumed = self
            .db(move |store| {
                // A takeover's attempt the listing stopped short of may
                // still have issued: then nothing is known yet. (The
                // channel's issues run in this task, so no newer one
                // started since the listing was asked for.)
                if store.newest_intent_id(&channel)? > settles {
                    return Ok(Vec::new());
                }
                let mut resumed = Vec::new();
                for (group, retry) in streaks {
                    let Some(row) = store.group(&channel, &group)? else {
                        continue;
                    };
                    let runtime = GroupRuntime {
                        consecutive_failures: retry.failures,
                        retry_not_before: Some(retry.not_before),
                        failure_kind: Some(retry.kind),
                        ..row.runtime
                    };
                    if store.record_group_failure(&channel, &group, &runtime, under.as_deref())? {
                        resumed.push((group, retry.not_before));
                    }
                }
                Ok(resumed)
            })
            .await?;
        for (group, retry_at) in resumed {
            tracing::info!(channel = %setup.id, group = %group, retry_at = %retry_at, "the listing shows LINE issued nothing for the attempts of unknown outcome: retrying at the transient pace");
        }
        Ok(())
    }

    async fn revoke(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        group: &GroupName,
        key_id: &KeyId,
        reason: RevokeReason,
    ) -> Result<(), StepError> {
        let token = self.stored_value(key_id).await?;
        match key_id.kind() {
            TokenKind::V21 => {
                let Some(secret) = &setup.secret else {
                    return Err(StepError::Contract {
                        what: format!(
                            "cannot revoke {key_id}: channel {} has no secret_file",
                            setup.id
                        ),
                        kind: FailureKind::Permanent,
                    });
                };
                self.line
                    .revoke_v21(&setup.id, secret, &token)
                    .await
                    .map_err(StepError::Line)?;
            }
            TokenKind::ShortLived => self.revoke_short_lived(key_id, &token).await?,
        }
        let now = self.clock.now();
        let key = key_id.clone();
        let why = format!("revoked: {}", revoke_reason_text(reason));
        let channel = setup.id.clone();
        // A slot of ours is free at LINE now, whatever its full refusal said
        // (of the v2.1 pool, the one LINE's refusal and listing are about).
        let clear_full = key_id.kind() == TokenKind::V21
            && snapshot.channel.as_ref().is_some_and(|c| c.full.is_some());
        self.db(move |store| {
            store.set_token_state(now, &key, TokenState::Revoked, &why)?;
            if clear_full {
                store.set_channel_full(&channel, None)?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(channel = %setup.id, group = %group, key_id = %key_id, reason = revoke_reason_text(reason), "token revoked");
        self.emit(RotationEvent::Revoked {
            channel: setup.id.clone(),
            group: group.clone(),
            key_id: key_id.clone(),
            reason,
        });
        Ok(())
    }

    /// Issues a token in `form`: v2.1 with the channel's assertion key,
    /// short-lived with its secret. A short-lived token gets its identity
    /// from its fingerprint: LINE gives it no key ID.
    async fn issue_in(
        &self,
        setup: &ChannelSetup,
        form: IssueForm<'_>,
    ) -> Result<Issued, LineError> {
        match form {
            IssueForm::V21(signer, assertion) => {
                let r = self.line.issue_v21_signed(signer, assertion).await?;
                Ok(Issued {
                    key_id: r.key_id,
                    access_token: r.access_token,
                    expires_in: r.expires_in,
                })
            }
            IssueForm::ShortLived(secret) => {
                let r = self.line.issue_short_lived(&setup.id, secret).await?;
                Ok(Issued {
                    key_id: KeyId::short_lived(&r.access_token),
                    access_token: r.access_token,
                    expires_in: r.expires_in,
                })
            }
        }
    }

    /// LINE's verify for a token of `kind`.
    async fn verify_of_kind(
        &self,
        token: &AccessToken,
        kind: TokenKind,
    ) -> Result<Verification, LineError> {
        match kind {
            TokenKind::V21 => self.line.verify_v21(token).await,
            TokenKind::ShortLived => self.line.verify_short_lived(token).await,
        }
    }

    /// Revokes a short-lived token (`/v2/oauth/revoke`, the token alone)
    /// and confirms it with verify: LINE answers 200 to a revoke of a token
    /// it does not know, so only a refused verify shows the token is gone.
    async fn revoke_short_lived(
        &self,
        key_id: &KeyId,
        token: &AccessToken,
    ) -> Result<(), StepError> {
        self.line
            .revoke_short_lived(token)
            .await
            .map_err(StepError::Line)?;
        match self
            .line
            .verify_short_lived(token)
            .await
            .map_err(StepError::Line)?
        {
            Verification::Rejected { .. } => Ok(()),
            Verification::Valid(_) => Err(StepError::Contract {
                what: format!(
                    "LINE answered the revoke of {key_id}, but its verify still accepts the token"
                ),
                kind: FailureKind::Transient,
            }),
        }
    }

    async fn verify(
        &self,
        setup: &ChannelSetup,
        group: &GroupName,
        key_id: &KeyId,
    ) -> Result<(), StepError> {
        let token = self.stored_value(key_id).await?;
        let answer = self
            .verify_of_kind(&token, key_id.kind())
            .await
            .map_err(StepError::Line)?;
        let now = self.clock.now();
        match check_verification(&answer, setup) {
            Ok(()) => {
                let key = key_id.clone();
                self.db(move |store| store.record_verified(now, &key))
                    .await?;
                tracing::debug!(channel = %setup.id, group = %group, key_id = %key_id, "token verified");
                Ok(())
            }
            Err(why)
                if key_id.kind() == TokenKind::ShortLived
                    && matches!(answer, Verification::Rejected { .. }) =>
            {
                // Nothing lists short-lived tokens, and LINE counts none it
                // refuses: the token is gone, evicted by another issuer's
                // 31st or revoked outside linetokd. Its group is issued a
                // replacement at once if it was the current one.
                let key = key_id.clone();
                let reason = format!(
                    "evicted or revoked: LINE's verify refused the short-lived token with time \
                     left ({why})"
                );
                self.db(move |store| store.set_token_state(now, &key, TokenState::Gone, &reason))
                    .await?;
                self.metrics.short_lived_evicted(&setup.id);
                tracing::error!(
                    channel = %setup.id,
                    group = %group,
                    key_id = %key_id,
                    "LINE no longer accepts a short-lived token of ours with time left: evicted by a 31st short-lived token on the channel (another issuer's, or one of ours), or revoked outside linetokd ({why})"
                );
                self.emit(RotationEvent::Gone {
                    channel: setup.id.clone(),
                    key_id: key_id.clone(),
                    why,
                });
                Ok(())
            }
            Err(why) => {
                // LINE no longer accepts the current token (revoked in the
                // console, or leaked and revoked). It may still be listed and
                // counted, so it is kept as refused: never handed out, still
                // counted, revoked when the secret is there; the policy
                // issues a replacement at once.
                let key = key_id.clone();
                let reason = format!("refused by verify: {why}");
                self.db(move |store| store.mark_refused(now, &key, &reason))
                    .await?;
                tracing::error!(
                    channel = %setup.id,
                    group = %group,
                    key_id = %key_id,
                    "LINE no longer accepts the current token ({why}); replacing it now"
                );
                self.emit(RotationEvent::Gone {
                    channel: setup.id.clone(),
                    key_id: key_id.clone(),
                    why,
                });
                Ok(())
            }
        }
    }

    /// Carries out an issue round ([`policy::issue_round`]): every member's
    /// plan is a lone issue, carried out in turn by [`Rotator::issue_round`]
    /// while the listing the round was decided on holds
    /// ([`policy::round_holds_until`]); each outcome is then recorded as
    /// [`Rotator::execute`] records a step's, every one of them even when
    /// the store fails for one.
    ///
    /// # Errors
    /// Only store failures; LINE's are recorded and end in a backoff.
    pub(super) async fn execute_round(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        state: &ChannelState,
        round: &[(usize, Plan)],
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        let members: Vec<(IssueJob<'_>, &Step)> = round
            .iter()
            .filter_map(|(gi, plan)| match plan.steps.as_slice() {
                [
                    step @ Step::Issue {
                        reason,
                        token_exp,
                        closes,
                    },
                ] => Some((
                    IssueJob {
                        gi: *gi,
                        reason: *reason,
                        token_exp: *token_exp,
                        closes,
                    },
                    step,
                )),
                _ => None,
            })
            .collect();
        let jobs: Vec<IssueJob<'_>> = members.iter().map(|(job, _)| *job).collect();
        self.line_allowed(&setup.id)?;
        let until = policy::round_holds_until(state, &self.rules());
        let outcomes = self
            .issue_round(setup, state, &jobs, Some(Round { cancel, until }))
            .await;
        let mut store_error = None;
        for ((job, step), outcome) in members.iter().zip(outcomes) {
            let recorded = match outcome {
                // Not sent: the next round decides afresh.
                None => Ok(()),
                Some(Ok(())) => {
                    self.end_streak_if_done(setup, snapshot, &state.groups[job.gi].group, step)
                        .await
                }
                Some(Err(StepError::Store(e))) => Err(e),
                Some(Err(error)) => {
                    self.record_failure(setup, state, job.gi, StepKind::Issue, error)
                        .await
                }
            };
            if let Err(e) = recorded {
                store_error.get_or_insert(e);
            }
        }
        store_error.map_or(Ok(()), Err)
    }

    /// Issues a token for each of `jobs` in turn (an issue round, or one
    /// issue), as the one-at-a-time loop would, sharing the store's work:
    /// each store job records the previous member's answer and journals
    /// the next member's intent (one transaction on SQLite, where group
    /// commit makes a job one; in that order on PostgreSQL), so a round of
    /// n issues takes n + 1 store jobs instead of 2n. The channel still has
    /// one issuance in flight at a time, and every token is stored before
    /// the next is asked for: a crash leaves at most one token LINE issued
    /// unrecorded (invariant 6). The round stops after the first member
    /// whose issue did not simply succeed, LINE's failure or the store's
    /// (what follows a failure is the driver's to decide afresh), and
    /// before its next member once `round` says so. Returns each member's
    /// outcome; `None` for members never sent.
    async fn issue_round(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        jobs: &[IssueJob<'_>],
        round: Option<Round<'_>>,
    ) -> Vec<Option<Result<(), StepError>>> {
        let mut outcomes: Vec<Option<Result<(), StepError>>> = jobs.iter().map(|_| None).collect();
        // The previous member's answer, recorded with the next intent.
        let mut answered: Option<Answered> = None;
        for (j, job) in jobs.iter().enumerate() {
            if j > 0 && round.as_ref().is_some_and(|r| r.over(self.clock.now())) {
                break;
            }
            let group = &state.groups[job.gi];
            // The assertion is signed before the intent is journaled, the
            // intent records its expiry, and the request carries exactly it
            // (docs/design.md §14.3): a request a paused leader sends late
            // is refused by LINE after that instant, which a new leader
            // counts on.
            let form = match self.sign_for(setup, group.kind, job.token_exp) {
                Ok(form) => form,
                Err(e) => {
                    outcomes[j] = Some(Err(e));
                    break;
                }
            };
            let record = answered.as_mut().and_then(|a| a.record.take());
            let started = self.clock.now();
            let (channel, name, exp) =
                (setup.id.clone(), group.group.clone(), form.assertion_exp());
            // The next intent only when the previous answer is recorded: a
            // store that failed it stops the round, as it stops the loop.
            let journaled = self
                .db(move |store| {
                    let written = record.map(|r| r.write(store));
                    let intent = match written {
                        Some(Err(_)) => None,
                        _ => Some(store.begin_issue_with(started, &channel, &name, exp)),
                    };
                    Ok((written, intent))
                })
                .await;
            let intent = match journaled {
                Ok((written, intent)) => {
                    if let Some(prev) = answered.take() {
                        let (pj, written) = (prev.j, written.unwrap_or(Ok(Vec::new())));
                        outcomes[pj] =
                            Some(self.finish(setup, state, &jobs[pj], prev, written).await);
                    }
                    match intent {
                        Some(Ok(intent)) => intent,
                        Some(Err(e)) => {
                            outcomes[j] = Some(Err(StepError::Store(e)));
                            break;
                        }
                        None => break,
                    }
                }
                Err(e) => {
                    // Nothing of the job is stored: neither the previous
                    // answer nor this intent, which was never sent.
                    match answered.take() {
                        Some(prev) => {
                            let pj = prev.j;
                            outcomes[pj] =
                                Some(self.finish(setup, state, &jobs[pj], prev, Err(e)).await);
                        }
                        None => outcomes[j] = Some(Err(StepError::Store(e))),
                    }
                    break;
                }
            };
            // The intent is journaled: from here a crash leaves it open, and
            // the next start reports it (tests wait on this line to kill us).
            tracing::debug!(channel = %setup.id, group = %group.group, intent = %intent, reason = %reason_text(job.reason), "issuing a token");
            // The journal write may have taken a while: the grant must still
            // have time for the call (docs/design.md §14.2). Nothing was
            // sent, so the intent closes as failed, not possibly issued.
            if let Err(e) = self.line_allowed(&setup.id) {
                let (now, text) = (self.clock.now(), error_chain(&e));
                let failed = self
                    .db(move |store| store.fail_issue(now, intent, &text, false))
                    .await;
                outcomes[j] = Some(Err(StepError::Store(failed.err().unwrap_or(e))));
                break;
            }
            let answer = self.ask(setup, state, group, form.form()).await;
            let succeeded = matches!(&answer, Answer::Issued(got) if got.refusal.is_none());
            let record = Record::of(setup, group, intent, &answer, job.closes);
            answered = Some(Answered {
                j,
                intent,
                answer,
                record: Some(record),
            });
            if !succeeded {
                break;
            }
        }
        if let Some(mut last) = answered.take() {
            let written = match last.record.take() {
                Some(record) => self.db(move |store| record.write(store)).await,
                None => Ok(Vec::new()),
            };
            let lj = last.j;
            outcomes[lj] = Some(self.finish(setup, state, &jobs[lj], last, written).await);
        }
        outcomes
    }

    /// What an answer comes to once the store recorded it (`written`, with
    /// the tokens the issue condemned): a published token, LINE's failure
    /// (the channel held when it was full), or the store's failure (under a
    /// lease, the token is then an orphan).
    async fn finish(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        job: &IssueJob<'_>,
        answered: Answered,
        written: Result<Vec<KeyId>, StoreError>,
    ) -> Result<(), StepError> {
        let group = &state.groups[job.gi];
        let intent = answered.intent;
        match (answered.answer, written) {
            (Answer::Failed { .. }, Err(e)) => {
                self.metrics.rotation(&setup.id, &group.group, false);
                Err(StepError::Store(e))
            }
            (Answer::Failed { error, .. }, Ok(_)) => {
                self.metrics.rotation(&setup.id, &group.group, false);
                if classify(&error) == FailureKind::ChannelFull {
                    self.hold_full_channel(setup, state, &group.group, intent.get(), error)
                        .await
                } else {
                    Err(StepError::Line(error))
                }
            }
            (Answer::Issued(got), Err(e)) => {
                self.unstored(setup, group, intent, &got, &e).await;
                Err(StepError::Store(e))
            }
            (Answer::Issued(got), Ok(condemned)) => {
                self.published(setup, group, job.reason, got, condemned)
            }
        }
    }

    /// What a v2.1 or short-lived issue for a group of `kind` sends: the
    /// assertion, signed now, or the channel secret.
    fn sign_for<'s>(
        &self,
        setup: &'s ChannelSetup,
        kind: TokenKind,
        token_exp: Duration,
    ) -> Result<Signed<'s>, StepError> {
        match (kind, &setup.secret) {
            (TokenKind::V21, _) => {
                let signer = signer_of(setup)?;
                let signed = self
                    .line
                    .sign_issue_v21(signer, token_exp)
                    .map_err(StepError::Line)?;
                Ok(Signed::V21(signer, signed))
            }
            (TokenKind::ShortLived, Some(secret)) => Ok(Signed::ShortLived(secret)),
            // Validation refuses this config; a store edited by hand is
            // the only way here.
            (TokenKind::ShortLived, None) => Err(StepError::Contract {
                what: format!(
                    "cannot issue a short-lived token: channel {} has no secret_file",
                    setup.id
                ),
                kind: FailureKind::Permanent,
            }),
        }
    }

    /// Revokes the token an unusable issue answer carried (`error`, a
    /// [`LineError::MaybeIssued`]), once LINE's verify says it is a live
    /// token of this channel: then nothing of the attempt is left issued,
    /// and the error becomes a transient one
    /// ([`LineError::revoked_what_it_carried`]). Otherwise (no secret for a
    /// v2.1 token, the value not live at LINE, a call failing) the error is
    /// returned as it is: LINE may have issued a token nobody holds, and
    /// the next listing settles it. (An outside test saw answers without a
    /// `key_id` leave eight such tokens, a minute apart, until the channel
    /// was full.)
    async fn revoke_carried(
        &self,
        setup: &ChannelSetup,
        group: &GroupView,
        error: LineError,
        token: AccessToken,
    ) -> LineError {
        let kind = group.kind;
        if kind == TokenKind::V21 && setup.secret.is_none() {
            tracing::warn!(channel = %setup.id, group = %group.group, "LINE's unusable answer carried a token, which cannot be revoked without the channel secret; it counts until the next listing settles it");
            return error;
        }
        let live = match self.verify_of_kind(&token, kind).await {
            Ok(Verification::Valid(v)) => v.client_id == setup.id,
            Ok(Verification::Rejected { .. }) | Err(_) => false,
        };
        if !live {
            tracing::warn!(channel = %setup.id, group = %group.group, "LINE's unusable answer carried a token its verify does not accept as this channel's; LINE may have issued another, which the next listing settles");
            return error;
        }
        let key_id = match kind {
            TokenKind::V21 => error.issued_key_id().cloned(),
            TokenKind::ShortLived => Some(KeyId::short_lived(&token)),
        };
        // Never one of ours: an answer that replays a stored token (a
        // confused proxy, a replay) must not cost consumers the token they
        // use. Unknown, or unreadable, it is left alone too.
        if let Some(key) = key_id.clone() {
            let stored = self.db(move |store| store.token(&key)).await;
            if !matches!(stored, Ok(None)) {
                tracing::warn!(channel = %setup.id, group = %group.group, "LINE's unusable answer carried a token linetokd already holds (or the store could not say); it is not revoked");
                return error;
            }
        }
        let revoked = match (kind, &setup.secret) {
            (TokenKind::V21, Some(secret)) => self
                .line
                .revoke_v21(&setup.id, secret, &token)
                .await
                .map_err(|e| error_chain(&e)),
            (TokenKind::ShortLived, _) => self
                .revoke_short_lived(&KeyId::short_lived(&token), &token)
                .await
                .map_err(|e| e.describe()),
            (TokenKind::V21, None) => return error,
        };
        let key_id = key_id.map_or_else(|| "-".to_owned(), |k| k.to_string());
        match revoked {
            Ok(()) => {
                tracing::warn!(channel = %setup.id, group = %group.group, key_id = %key_id, "LINE's unusable answer carried a live token; revoked it at LINE, so the attempt left nothing issued");
                error.revoked_what_it_carried()
            }
            Err(why) => {
                tracing::error!(channel = %setup.id, group = %group.group, key_id = %key_id, error = %why, "could not revoke the token LINE's unusable answer carried; it counts until the next listing settles it");
                error
            }
        }
    }

    /// One issue's call to LINE in `form` for `group`, and the verify of
    /// the token it brings.
    async fn ask(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        group: &GroupView,
        form: IssueForm<'_>,
    ) -> Answer {
        let issued = match self.issue_in(setup, form).await {
            Ok(issued) => issued,
            Err(mut error) => {
                if let Some(token) = error.take_carried_token() {
                    error = self.revoke_carried(setup, group, error, token).await;
                }
                return Answer::Failed {
                    error,
                    at: self.clock.now(),
                };
            }
        };
        let issued_at = after_newest(self.clock.now(), state, &group.group);
        // LINE's expiry lies between the start and `issued_at` plus its
        // lifetime; the later bound keeps the token counted until LINE has
        // certainly dropped it.
        let sane = (1..=MAX_SANE_EXPIRES_IN).contains(&issued.expires_in);
        let expires_at = issued_at
            + Duration::seconds(if sane {
                issued.expires_in
            } else {
                MAX_SANE_EXPIRES_IN
            });
        let refusal = if sane {
            match self.verify_of_kind(&issued.access_token, group.kind).await {
                Ok(answer) => check_verification(&answer, setup).err(),
                Err(e) => {
                    tracing::warn!(
                        channel = %setup.id,
                        group = %group.group,
                        key_id = %issued.key_id,
                        error = %error_chain(&e),
                        "could not verify the new token right away; storing and publishing it, the next verify checks it"
                    );
                    None
                }
            }
        } else {
            Some(format!(
                "LINE answered expires_in {} for a new token",
                issued.expires_in
            ))
        };
        let verified_at = if refusal.is_none() && sane {
            Some(self.clock.now())
        } else {
            None
        };
        Answer::Issued(Got {
            issued,
            kind: group.kind,
            issued_at,
            expires_at,
            verified_at,
            refusal,
        })
    }

    /// A token LINE issued and verify accepted, now stored: counted,
    /// logged and published, without the tokens its store write condemned
    /// (`condemned`). One verify refused is stored too, and fails the step:
    /// the group retries on the transient schedule.
    fn published(
        &self,
        setup: &ChannelSetup,
        group: &GroupView,
        reason: IssueReason,
        got: Got,
        condemned: Vec<KeyId>,
    ) -> Result<(), StepError> {
        let Got {
            issued,
            issued_at,
            expires_at,
            verified_at,
            refusal,
            ..
        } = got;
        if let Some(why) = refusal {
            self.metrics.rotation(&setup.id, &group.group, false);
            return Err(StepError::Contract {
                what: format!(
                    "the token LINE just issued ({}) failed verification: {why}",
                    issued.key_id
                ),
                kind: FailureKind::Transient,
            });
        }
        self.metrics.rotation(&setup.id, &group.group, true);
        tracing::info!(
            channel = %setup.id,
            group = %group.group,
            key_id = %issued.key_id,
            expires_at = %expires_at,
            reason = %reason_text(reason),
            "token issued"
        );
        self.emit(RotationEvent::Issued {
            channel: setup.id.clone(),
            group: group.group.clone(),
            key_id: issued.key_id,
            token: issued.access_token,
            issued_at,
            expires_at,
            reason,
            verified: verified_at.is_some(),
            condemned: condemned.clone(),
        });
        // The incident's tokens still live were marked refused with this
        // issue (`Store::complete_issue`). Delivery dropped them with the
        // publish above, so consumers were never handed one as the previous
        // token; the `Gone` tells every other listener. Only a group that
        // cannot revoke has any: otherwise the plan revoked each before the
        // issue.
        for key_id in condemned {
            tracing::warn!(channel = %setup.id, group = %group.group, key_id = %key_id, "{}", crate::store::CONDEMNED);
            self.emit(RotationEvent::Gone {
                channel: setup.id.clone(),
                key_id,
                why: crate::store::CONDEMNED.to_owned(),
            });
        }
        Ok(())
    }

    /// A token LINE issued that could not be stored (`why`). Without a
    /// lease the intent stays open, so the next listing counts the token;
    /// under a lease it is an orphan ([`Rotator::orphan`]).
    async fn unstored(
        &self,
        setup: &ChannelSetup,
        group: &GroupView,
        intent: IntentId,
        got: &Got,
        why: &StoreError,
    ) {
        if self.leadership.is_none() {
            return;
        }
        let unstored = Unstored {
            group: &group.group,
            kind: got.kind,
            intent,
            issued: &got.issued,
            expires_at: got.expires_at,
        };
        self.orphan(setup, &unstored, why).await;
    }

    /// Under `[ha]`, a token LINE issued that could not be stored (`why`:
    /// the fence failed, or the database is out of reach; docs/design.md
    /// §14.3): its key ID (never its value) goes into the unfenced orphan
    /// record when the database answers, it is revoked at LINE at once when
    /// the channel secret is configured, and the outcome is recorded.
    /// Nothing here publishes it; the value is dropped with `issued`.
    async fn orphan(&self, setup: &ChannelSetup, token: &Unstored<'_>, why: &StoreError) {
        let Unstored {
            group,
            kind,
            intent,
            issued,
            expires_at,
        } = *token;
        let (Some(ops), Ok(fence)) = (
            self.store.lease_ops(),
            super::WORK_FENCE.try_with(Clone::clone),
        ) else {
            return;
        };
        if why.is_fenced() {
            tracing::error!(
                channel = %setup.id,
                group = %group,
                key_id = %issued.key_id,
                epoch = fence.epoch.0,
                "the lease ended while LINE issued a token: it is never published (an orphan); revoking it when the channel secret allows"
            );
        } else {
            tracing::error!(
                channel = %setup.id,
                group = %group,
                key_id = %issued.key_id,
                epoch = fence.epoch.0,
                error = %error_chain(why),
                "the token LINE issued could not be stored: it is never published (an orphan); revoking it when the channel secret allows"
            );
        }
        let recorded = {
            let (channel, group, key_id) = (setup.id.clone(), group.clone(), issued.key_id.clone());
            let fence = fence.clone();
            ops.run(move |pool| async move {
                pool.record_orphan(&NewOrphan {
                    channel: &channel,
                    group: &group,
                    key_id: &key_id,
                    epoch: fence.epoch,
                    intent,
                    recorded_by: &fence.holder,
                    expires_at,
                })
                .await
            })
            .await
        };
        if let Err(e) = recorded {
            tracing::error!(channel = %setup.id, key_id = %issued.key_id, error = %error_chain(&e), "could not record the orphan token");
        }
        let outcome = match (kind, &setup.secret) {
            (TokenKind::V21, Some(secret)) => {
                match self
                    .line
                    .revoke_v21(&setup.id, secret, &issued.access_token)
                    .await
                {
                    Ok(()) => RevokeOutcome::Revoked,
                    Err(e) => RevokeOutcome::Failed(error_chain(&e)),
                }
            }
            (TokenKind::ShortLived, _) => {
                match self
                    .revoke_short_lived(&issued.key_id, &issued.access_token)
                    .await
                {
                    Ok(()) => RevokeOutcome::Revoked,
                    Err(e) => RevokeOutcome::Failed(e.describe()),
                }
            }
            (TokenKind::V21, None) => RevokeOutcome::NoSecret,
        };
        match &outcome {
            RevokeOutcome::Revoked => {
                tracing::warn!(channel = %setup.id, key_id = %issued.key_id, "orphan token revoked at LINE");
            }
            RevokeOutcome::Failed(why) => {
                tracing::error!(channel = %setup.id, key_id = %issued.key_id, error = %why, "could not revoke the orphan token; it stays counted until it expires");
            }
            RevokeOutcome::NoSecret => {
                tracing::error!(channel = %setup.id, key_id = %issued.key_id, "the orphan token cannot be revoked without the channel secret; it stays counted until it expires (lost_token)");
            }
        }
        let key_id = issued.key_id.clone();
        let settled = ops
            .run(move |pool| async move { pool.settle_orphan(&key_id, &outcome).await })
            .await;
        if let Err(e) = settled {
            tracing::error!(channel = %setup.id, key_id = %issued.key_id, error = %error_chain(&e), "could not record the orphan's revocation");
        }
    }

    /// LINE's 30-token refusal: the channel is full at LINE right now. Not
    /// a failure of the group: the channel is held until the next expiry
    /// LINE will honour, and the next issue waits for a fresh listing, or
    /// for that instant while the listing fails (docs/design.md §5.3).
    async fn hold_full_channel(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        group: &GroupName,
        intent: i64,
        error: LineError,
    ) -> Result<(), StepError> {
        let now = self.clock.now();
        let until = policy::full_until(now, state, &self.rules());
        let channel = setup.id.clone();
        let detail = format!("{}; no issue before {until}", error_chain(&error));
        let group_name = group.clone();
        self.db(move |store| {
            store.set_channel_full(
                &channel,
                Some(FullHold {
                    since: now,
                    until,
                    intent,
                }),
            )?;
            store.record_event(
                now,
                &NewEvent {
                    channel_id: channel.clone(),
                    group: Some(group_name),
                    key_id: None,
                    kind: EventKind::IssueFailed,
                    detail,
                },
            )?;
            Ok(())
        })
        .await?;
        tracing::warn!(
            channel = %setup.id,
            group = %group,
            request_id = error.request_id().unwrap_or("-"),
            retry_at = %until,
            "LINE refused to issue: the channel holds 30 live tokens; listing the key IDs again, and no issue before retry_at (a token of ours expiring or a one-minute recheck, whichever comes first)"
        );
        self.emit(RotationEvent::Failed {
            channel: setup.id.clone(),
            group: group.clone(),
            step: StepKind::Issue,
            error: "the channel holds 30 live tokens at LINE".to_owned(),
            retry_at: until,
            kind: FailureKind::ChannelFull,
        });
        Ok(())
    }

    async fn stored_value(&self, key_id: &KeyId) -> Result<AccessToken, StepError> {
        let key = key_id.clone();
        let token = self.db(move |store| store.token(&key)).await?;
        token.map(|t| t.value).ok_or_else(|| {
            StepError::Store(StoreError::UnknownToken {
                key_id: key_id.clone(),
            })
        })
    }

    /// Holds each group of `setup` named in `groups`, whose issuance a
    /// previous run left in flight, as after a "may have issued" failure
    /// (docs/design.md 5.4): at least a minute, and no later than its
    /// deadline. Without it the restarted daemon asked LINE again within a
    /// second or two, and a daemon killed at the same step on every start
    /// left a token nobody can revoke on every start.
    pub(super) async fn hold_after_lost_issues(
        &self,
        setup: &ChannelSetup,
        groups: &[GroupName],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let snapshot = self.snapshot(setup, now).await?;
        let state = snapshot.state(&setup.id, setup.secret.is_some());
        for group in groups {
            let Some(gi) = state.groups.iter().position(|g| g.group == *group) else {
                continue;
            };
            let error = StepError::Contract {
                what: "linetokd stopped while this issuance was in flight; LINE may have \
                       issued a token nobody can revoke, so the next attempt waits"
                    .to_owned(),
                kind: FailureKind::MaybeIssued,
            };
            self.record_failure(setup, &state, gi, StepKind::Issue, error)
                .await?;
        }
        Ok(())
    }

    async fn record_failure(
        &self,
        setup: &ChannelSetup,
        state: &ChannelState,
        gi: usize,
        step: StepKind,
        error: StepError,
    ) -> Result<(), StoreError> {
        let view = &state.groups[gi];
        let group = &view.group;
        let rules: std::sync::Arc<Rules> = self.rules();
        let now = self.clock.now();
        let kind = error.kind();
        let retry = RetryState::after_failure(
            view.retry.as_ref(),
            now,
            Failed::at(step, kind).retry_after(error.retry_after()),
            self.jitter(),
            &rules.retry,
            // A permanent failure of a group without a token keeps its slow
            // pace: retrying a wrong key every minute fixes nothing, and a
            // config change or `rotate` ends the hold at once.
            match kind {
                FailureKind::Permanent if view.current(now).is_none() => None,
                _ => policy::deadline(now, view, &rules),
            },
        );
        let text = error.describe();
        let request_id = match &error {
            StepError::Line(e) => e.request_id().unwrap_or("-").to_owned(),
            _ => "-".to_owned(),
        };
        let runtime = GroupRuntime {
            last_error: Some(format!("{step}: {text}")),
            last_error_at: Some(now),
            consecutive_failures: retry.failures,
            retry_not_before: Some(retry.not_before),
            failure_kind: Some(kind),
            failed_step: Some(step.name().to_owned()),
        };
        let event_kind = match step {
            StepKind::Verify => Some(EventKind::VerifyFailed),
            StepKind::Revoke => Some(EventKind::RevokeFailed),
            // The issue journal records its own failures.
            _ => None,
        };
        let (channel, group_name, detail) = (setup.id.clone(), group.clone(), text.clone());
        let under = setup.fingerprint.clone();
        let recorded = self
            .db(move |store| {
                // A failure with a key, kid or secret a reload has since
                // replaced says nothing about the new ones: recorded, a
                // permanent one would hold the group for `permanent_interval`
                // after the fix (found when a test reloading a fixed secret hung
                // under load; the reload may end the streaks while this call is
                // in flight).
                if !store.record_group_failure(&channel, &group_name, &runtime, under.as_deref())? {
                    return Ok(false);
                }
                if let Some(kind) = event_kind {
                    store.record_event(
                        now,
                        &NewEvent {
                            channel_id: channel.clone(),
                            group: Some(group_name.clone()),
                            key_id: None,
                            kind,
                            detail,
                        },
                    )?;
                }
                Ok(true)
            })
            .await?;
        if !recorded {
            tracing::info!(
                channel = %setup.id,
                group = %group,
                step = step.name(),
                request_id,
                "{step} failed with the key, kid or secret a reload has replaced since; not counted, the channel is worked again with the new ones: {text}"
            );
            return Ok(());
        }
        tracing::warn!(
            channel = %setup.id,
            group = %group,
            step = step.name(),
            kind = %kind,
            request_id,
            failures = retry.failures,
            retry_at = %retry.not_before,
            "{step} failed: {text}"
        );
        self.emit(RotationEvent::Failed {
            channel: setup.id.clone(),
            group: group.clone(),
            step,
            error: text,
            retry_at: retry.not_before,
            kind,
        });
        Ok(())
    }

    /// A failed key-ID listing: the channel's streak grows (deadline-aware,
    /// against the earliest group deadline); no group is held by it.
    async fn record_listing_failure(
        &self,
        setup: &ChannelSetup,
        snapshot: &Snapshot,
        state: &ChannelState,
        error: StepError,
    ) -> Result<(), StoreError> {
        let rules = self.rules();
        let now = self.clock.now();
        let previous = state.view.reconcile_retry.clone();
        let failures_before = snapshot
            .channel
            .as_ref()
            .map_or(0, |c| c.reconcile.failures);
        let kind = match error.kind() {
            FailureKind::RateLimited => FailureKind::RateLimited,
            FailureKind::Permanent => FailureKind::Permanent,
            _ => FailureKind::Transient,
        };
        let retry = RetryState::after_failure(
            previous.as_ref().filter(|_| failures_before > 0),
            now,
            Failed::at(StepKind::Reconcile, kind).retry_after(error.retry_after()),
            self.jitter(),
            &rules.retry,
            // As for a group: a permanent failure keeps its slow pace.
            match kind {
                FailureKind::Permanent => None,
                _ => policy::listing_deadline(now, state, &rules),
            },
        );
        let text = error.describe();
        let runtime = ReconcileRuntime {
            failures: retry.failures,
            retry_not_before: Some(retry.not_before),
            error: Some(text.clone()),
        };
        let (channel, detail) = (setup.id.clone(), text.clone());
        let under = setup.fingerprint.clone();
        let recorded = self
            .db(move |store| {
                // As for a group's failure: one made with replaced credentials
                // is not the channel's.
                if !store.record_listing_failure(&channel, &runtime, under.as_deref())? {
                    return Ok(false);
                }
                store.record_event(
                    now,
                    &NewEvent {
                        channel_id: channel.clone(),
                        group: None,
                        key_id: None,
                        kind: EventKind::ReconcileFailed,
                        detail,
                    },
                )?;
                Ok(true)
            })
            .await?;
        if !recorded {
            tracing::info!(channel = %setup.id, "listing the channel's key IDs failed with the key or kid a reload has replaced since; not counted: {text}");
            return Ok(());
        }
        tracing::warn!(channel = %setup.id, kind = %kind, failures = retry.failures, retry_at = %retry.not_before, "listing the channel's key IDs failed: {text}");
        self.emit(RotationEvent::ListingFailed {
            channel: setup.id.clone(),
            groups: state
                .groups
                .iter()
                .filter(|g| g.kind.is_listed())
                .map(|g| g.group.clone())
                .collect(),
            error: text,
            retry_at: retry.not_before,
            kind,
        });
        Ok(())
    }
}

/// The issue time to record for a token of `group` received at `now`:
/// `now`, or a millisecond after the group's newest token if that is not
/// earlier. Issue times order a group's tokens everywhere (the newest is
/// handed out, the oldest revoked first); two issues within one
/// millisecond (a clock that does not move, or steps back) tied, and the
/// tie went by key ID, at random, so the newest token could be revoked.
/// Stamped strictly after, the later token is always the newer. The
/// expiry computed from it errs late by that millisecond, the safe side
/// for counting a token against the cap.
fn after_newest(now: DateTime<Utc>, state: &ChannelState, group: &GroupName) -> DateTime<Utc> {
    let newest = state
        .groups
        .iter()
        .find(|g| &g.group == group)
        .and_then(|g| g.tokens.iter().map(|t| t.issued_at).max());
    match newest {
        Some(newest) if newest >= now => newest + Duration::milliseconds(1),
        _ => now,
    }
}

/// A token LINE issued that could not be stored ([`Rotator::orphan`]).
#[derive(Clone, Copy)]
struct Unstored<'a> {
    group: &'a GroupName,
    kind: TokenKind,
    intent: IntentId,
    issued: &'a Issued,
    expires_at: DateTime<Utc>,
}

/// One group's issue in an issue round: `state.groups[gi]`, and what its
/// plan's issue step says.
#[derive(Clone, Copy)]
pub(super) struct IssueJob<'a> {
    gi: usize,
    reason: IssueReason,
    token_exp: Duration,
    /// The operator requests the issue carries out.
    closes: &'a [i64],
}

/// What an issue sends, ready before its intent is journaled.
enum Signed<'a> {
    /// v2.1: the channel's assertion key and the assertion signed with it.
    V21(&'a AssertionSigner, SignedAssertion),
    /// Short-lived: the channel secret.
    ShortLived(&'a ChannelSecret),
}

impl Signed<'_> {
    fn form(&self) -> IssueForm<'_> {
        match self {
            Self::V21(signer, assertion) => IssueForm::V21(signer, assertion),
            Self::ShortLived(secret) => IssueForm::ShortLived(secret),
        }
    }

    /// The instant LINE refuses the request from: the assertion's `exp`.
    fn assertion_exp(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::V21(_, assertion) => Some(assertion.expires_at),
            Self::ShortLived(_) => None,
        }
    }
}

/// How a token is issued, ready to send.
#[derive(Clone, Copy)]
enum IssueForm<'a> {
    /// v2.1, with an assertion signed before the intent was journaled.
    V21(&'a AssertionSigner, &'a SignedAssertion),
    /// Short-lived, with the channel secret.
    ShortLived(&'a ChannelSecret),
}

/// What LINE made of one issue.
enum Answer {
    /// LINE failed or refused (`at`: when the failure came).
    Failed { error: LineError, at: DateTime<Utc> },
    /// LINE issued a token.
    Issued(Got),
}

/// When an issue round stops before its next member: the daemon is
/// stopping, or the listing it was decided on no longer holds.
struct Round<'a> {
    cancel: &'a CancellationToken,
    until: DateTime<Utc>,
}

impl Round<'_> {
    fn over(&self, now: DateTime<Utc>) -> bool {
        self.cancel.is_cancelled() || now >= self.until
    }
}

/// A member of an issue round that LINE answered, until its answer is
/// recorded.
struct Answered {
    /// Its index in the round.
    j: usize,
    intent: IntentId,
    answer: Answer,
    /// What the store records; taken by the job that writes it.
    record: Option<Record>,
}

/// A token LINE issued, with what the rotator made of it.
struct Got {
    issued: Issued,
    kind: TokenKind,
    issued_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    /// When verify accepted it, if it did.
    verified_at: Option<DateTime<Utc>>,
    /// Why it is not usable: verify refused it, or LINE gave it an absurd
    /// lifetime.
    refusal: Option<String>,
}

/// One issue's answer as the store records it: owned, for the store's
/// thread.
enum Record {
    Failed {
        intent: IntentId,
        at: DateTime<Utc>,
        text: String,
        /// LINE may have issued a token the next listing settles.
        maybe: bool,
    },
    Issued {
        intent: IntentId,
        token: IssuedToken,
        closes: Vec<i64>,
        refused: Option<String>,
    },
}

impl Record {
    fn of(
        setup: &ChannelSetup,
        group: &GroupView,
        intent: IntentId,
        answer: &Answer,
        closes: &[i64],
    ) -> Self {
        match answer {
            Answer::Failed { error, at } => {
                let failure = classify(error);
                // A v2.1 token LINE may have issued is settled by the next
                // key-ID listing, so the attempt stays counted until then.
                // Nothing lists short-lived tokens: such a token, if it
                // exists, is invisible for its 30 days (later issues evict
                // it as the oldest), so counting it would hold the pool for
                // good. The retry is still the slow "may have issued" one.
                let may_have_issued = failure == FailureKind::MaybeIssued;
                if may_have_issued && !group.kind.is_listed() {
                    tracing::warn!(channel = %setup.id, group = %group.group, "LINE may have issued a short-lived token that linetokd never received; it cannot be listed or revoked, and expires in 30 days or is evicted by later issues");
                }
                Self::Failed {
                    intent,
                    at: *at,
                    text: error_chain(error),
                    maybe: may_have_issued && group.kind.is_listed(),
                }
            }
            Answer::Issued(got) => Self::Issued {
                intent,
                token: IssuedToken {
                    key_id: got.issued.key_id.clone(),
                    value: got.issued.access_token.clone(),
                    issued_at: got.issued_at,
                    expires_at: got.expires_at,
                    verified_at: got.verified_at,
                },
                // A token that fails its first verify carries out no
                // request: it is stored (LINE may count it), refused,
                // revoked when possible, and the group retries on the
                // transient schedule.
                closes: if got.refusal.is_none() {
                    closes.to_vec()
                } else {
                    Vec::new()
                },
                refused: got.refusal.clone(),
            },
        }
    }

    /// Writes the answer; for an issued token, returns the key IDs its
    /// store write condemned.
    fn write(&self, store: &Store) -> Result<Vec<KeyId>, StoreError> {
        match self {
            Self::Failed {
                intent,
                at,
                text,
                maybe,
            } => store
                .fail_issue(*at, *intent, text, *maybe)
                .map(|()| Vec::new()),
            Self::Issued {
                intent,
                token,
                closes,
                refused,
            } => {
                let completed = store.complete_issue(token.issued_at, *intent, token, closes)?;
                if let Some(why) = refused {
                    store.mark_refused(
                        token.issued_at,
                        &token.key_id,
                        &format!("the new token failed verification: {why}"),
                    )?;
                }
                Ok(completed.condemned)
            }
        }
    }
}

/// The channel's assertion signer, which every v2.1 request needs. Only a
/// hand-edited store or a bug asks for one on a channel configured without
/// a key: validation requires it wherever a v2.1 group exists.
fn signer_of(setup: &ChannelSetup) -> Result<&AssertionSigner, StepError> {
    setup.signer.as_ref().ok_or_else(|| StepError::Contract {
        what: format!(
            "channel {} has no key_file and kid, which v2.1 tokens need",
            setup.id
        ),
        kind: FailureKind::Permanent,
    })
}

/// What LINE answered to an issue, whatever the kind.
struct Issued {
    /// The token's identity: LINE's key ID, or a short-lived token's
    /// fingerprint.
    key_id: KeyId,
    access_token: AccessToken,
    expires_in: i64,
}

/// A phrase for why a token is issued, for logs.
fn reason_text(reason: IssueReason) -> &'static str {
    match reason {
        IssueReason::NoCurrent => "the group has no live token",
        IssueReason::Due => "rotation due",
        IssueReason::Requested => "rotation requested",
        IssueReason::Incident => "incident",
    }
}

/// Checks LINE's verify answer against what the token must be: accepted,
/// for this channel, with a sane time left. The error says what is wrong.
fn check_verification(answer: &Verification, setup: &ChannelSetup) -> Result<(), String> {
    match answer {
        Verification::Valid(v) if v.client_id != setup.id => Err(format!(
            "LINE says the token belongs to channel {}, not {}",
            v.client_id, setup.id
        )),
        Verification::Valid(v) if !(1..=MAX_SANE_EXPIRES_IN).contains(&v.expires_in) => Err(
            format!("LINE's verify answered expires_in {}", v.expires_in),
        ),
        Verification::Valid(_) => Ok(()),
        Verification::Rejected {
            description,
            request_id,
            ..
        } => Err(format!(
            "LINE's verify refused it ({}; request {})",
            description.as_deref().unwrap_or("no description"),
            request_id.as_deref().unwrap_or("-")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line::{Endpoint, TransientCause};

    #[test]
    fn only_an_issue_without_a_usable_answer_may_have_issued() {
        let timeout = |endpoint| LineError::Transient {
            endpoint,
            cause: TransientCause::Timeout,
            retry_after: None,
            request_id: None,
            source: None,
        };
        assert_eq!(
            classify(&timeout(Endpoint::IssueV21)),
            FailureKind::MaybeIssued
        );
        assert_eq!(
            classify(&timeout(Endpoint::VerifyV21)),
            FailureKind::Transient
        );
        let connect = LineError::Transient {
            endpoint: Endpoint::IssueV21,
            cause: TransientCause::Connect,
            retry_after: None,
            request_id: None,
            source: None,
        };
        assert_eq!(classify(&connect), FailureKind::Transient);
    }
}
